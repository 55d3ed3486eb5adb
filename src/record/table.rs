//! `dimple_cells` and `dimple_past`: the table-valued functions through which
//! SQL reads a record's cells and past as rows (the views of schema/log.sql,
//! the checks and counts written in SQL).

use super::{broken, decode_row, Cell, Id};

/// Makes `dimple_cells(record)` known on `conn`: a table-valued function giving
/// a record's cells as rows (attr_n, id, author_n, tx_n, old_value, new_value,
/// and past_n, how many changes the record's past holds),
/// ids in the log's stored form (16 bytes, or text). The seed's views
/// (`ZV_CHANGE`, `ZV_CLOCK`) and the view `ZV_LOG` read the records through it,
/// so a connection must have it before it reads them: dimple's own connections
/// do, an app's gets it from [`crate::log::register`]. `dimple_past(record)`
/// gives the record's past the same way (`ZV_LOG` reads it too).
pub fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.create_module("dimple_cells", rusqlite::vtab::eponymous_only_module::<CellsTab<false>>(), None)?;
    conn.create_module("dimple_past", rusqlite::vtab::eponymous_only_module::<CellsTab<true>>(), None)
}

/// The `dimple_cells` virtual table, or `dimple_past`'s when `PAST`
/// (eponymous: it exists on every connection it is registered on, and holds
/// nothing of its own).
#[repr(C)]
struct CellsTab<const PAST: bool> {
    /// SQLite's part; must come first.
    base: rusqlite::vtab::sqlite3_vtab,
}

/// The hidden column holding the function's argument, after the seven it gives.
const CELLS_ARG: std::os::raw::c_int = 7;

unsafe impl<'vtab, const PAST: bool> rusqlite::vtab::VTab<'vtab> for CellsTab<PAST> {
    type Aux = ();
    type Cursor = CellsCursor<'vtab, PAST>;

    fn connect(
        db: &mut rusqlite::vtab::VTabConnection,
        _aux: Option<&()>,
        _args: &[&[u8]],
    ) -> rusqlite::Result<(String, Self)> {
        db.config(rusqlite::vtab::VTabConfig::Innocuous)?;
        Ok((
            "CREATE TABLE x(attr_n, id, author_n, tx_n, old_value, new_value, past_n, cells HIDDEN)".to_owned(),
            CellsTab { base: rusqlite::vtab::sqlite3_vtab::default() },
        ))
    }

    /// Only a plan that gives the record can run: without it there is nothing
    /// to read (SQLite then orders the join so that the record comes first).
    fn best_index(&self, info: &mut rusqlite::vtab::IndexInfo) -> rusqlite::Result<()> {
        let mut arg = None;
        let mut unusable = false;
        for (i, c) in info.constraints().enumerate() {
            if c.column() != CELLS_ARG {
                continue;
            }
            if !c.is_usable() {
                unusable = true;
            } else if c.operator() == rusqlite::vtab::IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ {
                arg = Some(i);
            }
        }
        match arg {
            Some(i) => {
                let mut usage = info.constraint_usage(i);
                usage.set_argv_index(1);
                usage.set_omit(true);
                info.set_estimated_cost(10.0);
                info.set_estimated_rows(5);
                Ok(())
            }
            None if unusable => {
                Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT), None))
            }
            None => Err(rusqlite::Error::ModuleError(
                "dimple_cells and dimple_past need a record: dimple_cells(cells)".into(),
            )),
        }
    }

    fn open(&'vtab mut self) -> rusqlite::Result<CellsCursor<'vtab, PAST>> {
        Ok(CellsCursor {
            base: Default::default(),
            cells: Vec::new(),
            past_n: 0,
            at: 0,
            _tab: std::marker::PhantomData,
        })
    }
}

#[repr(C)]
struct CellsCursor<'vtab, const PAST: bool> {
    /// SQLite's part; must come first.
    base: rusqlite::vtab::sqlite3_vtab_cursor,
    cells: Vec<Cell>,
    /// How many changes the record's past holds (column `past_n`): a check
    /// of a snapshot's records asks in the same pass as it reads the cells.
    past_n: usize,
    at: usize,
    _tab: std::marker::PhantomData<&'vtab CellsTab<PAST>>,
}

unsafe impl<const PAST: bool> rusqlite::vtab::VTabCursor for CellsCursor<'_, PAST> {
    fn filter(
        &mut self,
        _idx_num: std::os::raw::c_int,
        _idx_str: Option<&str>,
        args: &rusqlite::vtab::Values<'_>,
    ) -> rusqlite::Result<()> {
        self.at = 0;
        self.cells = match args.iter().next() {
            Some(rusqlite::types::ValueRef::Blob(b)) => {
                let (cells, past) = decode_row(b).map_err(|e| rusqlite::Error::ModuleError(e.to_string()))?;
                self.past_n = past.len();
                if PAST {
                    past
                } else {
                    cells
                }
            }
            Some(rusqlite::types::ValueRef::Null) | None => Vec::new(),
            Some(_) => return Err(rusqlite::Error::ModuleError(broken().to_string())),
        };
        Ok(())
    }

    fn next(&mut self) -> rusqlite::Result<()> {
        self.at += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.at >= self.cells.len()
    }

    fn column(&self, ctx: &mut rusqlite::vtab::Context, i: std::os::raw::c_int) -> rusqlite::Result<()> {
        let c = &self.cells[self.at];
        // Numbers were written from SQLite integers: they fit back.
        let n = |v: u64| v as i64;
        match i {
            0 => ctx.set_result(&n(c.attr_n)),
            1 => match &c.id {
                Id::Uuid(b) => ctx.set_result(&&b[..]),
                Id::Text(t) => ctx.set_result(t),
            },
            2 => ctx.set_result(&n(c.author_n)),
            3 => ctx.set_result(&n(c.tx_n)),
            4 => ctx.set_result(&c.old_value),
            5 => ctx.set_result(&c.new_value),
            6 => ctx.set_result(&(self.past_n as i64)),
            _ => ctx.set_result(&rusqlite::types::Null),
        }
    }

    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(self.at as i64)
    }
}
