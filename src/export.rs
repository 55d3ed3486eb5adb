//! `dimple export` / `dimple import`: tracked tables as files people and other
//! tools can read, without losing a single storage class on the way back in.
//!
//! Both formats carry every cell in the exact value encoding of [`crate::value`]:
//! - JSON: one array of objects per table, `{"column": <encoded value>, ...}`. The
//!   encoding is itself JSON, so the file is ordinary JSON: `1` is an integer, `1.0`
//!   a real, `"1"` text, `{"blob":"<base64>"}` a blob, `{"real":"inf"}` infinity.
//! - CSV: a header row of column names, then one row per table row whose cells are
//!   the same encodings as text (text cells therefore keep their JSON quotes:
//!   `"hello"` is the cell for the text hello, `null` for NULL, `1` an integer).
//!
//! Import goes through [`Replica::transaction`], so imported rows are captured like
//! any app write and reach the other replicas; a row whose key exists is updated
//! (only the columns the file has), any other row is inserted.

use crate::error::{Error, Result};
use crate::replica::Replica;
use crate::sql::ident;
use crate::track::{self, TableInfo};
use crate::value;
use crate::value::Cell;
use rusqlite::Connection;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }

    /// The format a file name says (`.csv` or `.json`).
    pub fn of_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// One written file.
#[derive(Debug, Clone, Serialize)]
pub struct Exported {
    pub table: String,
    pub path: String,
    pub rows: usize,
}

/// Writes every tracked table to `<dir>/<table>.<ext>`.
pub fn export(r: &Replica, dir: &Path, format: Format) -> Result<Vec<Exported>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // One read transaction: every file reflects the same moment.
    let conn = r.conn();
    conn.execute_batch("BEGIN")?;
    let out = export_all(conn, dir, format);
    conn.execute_batch("COMMIT")?;
    out
}

fn export_all(conn: &Connection, dir: &Path, format: Format) -> Result<Vec<Exported>> {
    let mut out = Vec::new();
    for table in track::tracked_names(conn)? {
        let Some(info) = track::inspect(conn, &table)? else { continue };
        let path = dir.join(format!("{table}.{}", format.extension()));
        let rows = write_table(conn, &info, &path, format)?;
        out.push(Exported { table, path: path.display().to_string(), rows });
    }
    Ok(out)
}

fn columns_of(info: &TableInfo) -> Vec<String> {
    info.key_columns.iter().chain(&info.columns).cloned().collect()
}

fn write_table(conn: &Connection, info: &TableInfo, path: &Path, format: Format) -> Result<usize> {
    let cols = columns_of(info);
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "),
        ident(&info.name),
        info.key_columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ")
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| Error::io(path, e);
    let mut n = 0;
    match format {
        Format::Json => {
            let names: Vec<String> =
                cols.iter().map(|c| serde_json::to_string(c).expect("strings serialize")).collect();
            w.write_all(b"[").map_err(io)?;
            while let Some(row) = rows.next()? {
                let cells: Vec<String> = (0..cols.len())
                    .map(|i| Ok(format!("{}:{}", names[i], value::encode_ref(row.get_ref(i)?))))
                    .collect::<Result<_>>()?;
                let sep = if n == 0 { "\n" } else { ",\n" };
                write!(w, "{sep}{{{}}}", cells.join(",")).map_err(io)?;
                n += 1;
            }
            w.write_all(b"\n]\n").map_err(io)?;
        }
        Format::Csv => {
            let mut csv = csv::Writer::from_writer(w);
            let csverr = |e: csv::Error| Error::Invalid(format!("{}: {e}", path.display()));
            csv.write_record(&cols).map_err(csverr)?;
            while let Some(row) = rows.next()? {
                let cells: Vec<String> =
                    (0..cols.len()).map(|i| Ok(value::encode_ref(row.get_ref(i)?))).collect::<Result<_>>()?;
                csv.write_record(&cells).map_err(csverr)?;
                n += 1;
            }
            w = csv.into_inner().map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        }
    }
    w.flush().map_err(io)?;
    Ok(n)
}

/// Reads a file written by [`export`] (or by hand in the same encoding): column
/// names and one vector of values per row.
pub fn read_file(path: &Path, format: Format) -> Result<(Vec<String>, Vec<Vec<Cell>>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |what: String| Error::Invalid(format!("{}: {what}", path.display()));
    match format {
        Format::Json => {
            let objects: Vec<HashMap<String, &serde_json::value::RawValue>> =
                serde_json::from_str(&text).map_err(|e| bad(format!("not an array of objects: {e}")))?;
            let mut cols: Vec<String> = Vec::new();
            for o in &objects {
                for k in o.keys() {
                    if !cols.contains(k) {
                        cols.push(k.clone());
                    }
                }
            }
            cols.sort();
            let mut rows = Vec::with_capacity(objects.len());
            for (i, o) in objects.iter().enumerate() {
                // A column an object lacks is left as it is (None), not set to NULL.
                let row = cols
                    .iter()
                    .map(|c| match o.get(c) {
                        Some(raw) => {
                            value::decode(raw.get()).map(Some).map_err(|e| bad(format!("row {}: {c}: {e}", i + 1)))
                        }
                        None => Ok(None),
                    })
                    .collect::<Result<Vec<Option<Cell>>>>()?;
                if row.iter().any(Option::is_none) {
                    return Err(bad(format!("row {}: every object must have the same columns", i + 1)));
                }
                rows.push(row.into_iter().flatten().collect());
            }
            Ok((cols, rows))
        }
        Format::Csv => {
            let mut rd = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
            let cols: Vec<String> = rd.headers().map_err(|e| bad(e.to_string()))?.iter().map(str::to_owned).collect();
            let mut rows = Vec::new();
            for (i, rec) in rd.records().enumerate() {
                let rec = rec.map_err(|e| bad(e.to_string()))?;
                let row = rec
                    .iter()
                    .zip(&cols)
                    .map(|(cell, c)| value::decode(cell).map_err(|e| bad(format!("row {}: {c}: {e}", i + 1))))
                    .collect::<Result<Vec<_>>>()?;
                rows.push(row);
            }
            Ok((cols, rows))
        }
    }
}

/// Loads `path` into tracked `table` as one captured transaction. Returns the
/// number of rows.
pub fn import(r: &mut Replica, table: &str, path: &Path, format: Option<Format>) -> Result<usize> {
    let format = format.or_else(|| Format::of_path(path)).ok_or_else(|| {
        Error::Invalid(format!("{}: say --format csv|json (no .csv or .json ending)", path.display()))
    })?;
    if !track::tracked_names(r.conn())?.iter().any(|t| t == table) {
        return Err(Error::Invalid(format!("table {table:?} is not tracked (run `dimple track` first)")));
    }
    let info = track::inspect(r.conn(), table)?.ok_or_else(|| Error::Invalid(format!("no table named {table:?}")))?;
    let (cols, rows) = read_file(path, format)?;
    // Names from the file reach SQL only after matching the table's own columns.
    for c in &cols {
        if !info.key_columns.contains(c) && !info.has_column(c) {
            return Err(Error::Invalid(format!("{}: table {table} has no column {c:?}", path.display())));
        }
    }
    for k in &info.key_columns {
        if !cols.contains(k) {
            return Err(Error::Invalid(format!("{}: key column {k:?} is missing", path.display())));
        }
    }
    let sets: Vec<String> =
        cols.iter().filter(|c| info.has_column(c)).map(|c| format!("{0} = excluded.{0}", ident(c))).collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}",
        ident(table),
        cols.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "),
        (1..=cols.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", "),
        info.key_columns.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "),
        if sets.is_empty() { "DO NOTHING".to_owned() } else { format!("DO UPDATE SET {}", sets.join(", ")) }
    );
    let n = rows.len();
    r.transaction(|tx| {
        let mut stmt = tx.prepare(&sql)?;
        for row in &rows {
            stmt.execute(rusqlite::params_from_iter(row))?;
        }
        Ok(())
    })?;
    Ok(n)
}
