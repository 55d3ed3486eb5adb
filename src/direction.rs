//! Which way a replica syncs (the seed's per-remote push/pull/both): a replica that
//! only pulls never writes to the bucket (not even its descriptor), one that only
//! pushes never applies other replicas' changes. Stored in `ZV_METADATA`, honoured by
//! [`crate::push`] and [`crate::pull`] themselves, so every caller (CLI, agent, app)
//! obeys it.

use crate::error::{Error, Result};
use crate::meta;
use rusqlite::Connection;
use serde::Serialize;

const KEY: &str = "direction";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Push,
    Pull,
    #[default]
    Both,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Push => "push",
            Direction::Pull => "pull",
            Direction::Both => "both",
        }
    }

    pub fn pushes(self) -> bool {
        self != Direction::Pull
    }

    pub fn pulls(self) -> bool {
        self != Direction::Push
    }
}

impl std::str::FromStr for Direction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "push" => Ok(Direction::Push),
            "pull" => Ok(Direction::Pull),
            "both" => Ok(Direction::Both),
            _ => Err(Error::Invalid(format!("direction must be push, pull or both, not {s:?}"))),
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn get(conn: &Connection) -> Result<Direction> {
    match meta::get(conn, KEY)? {
        Some(s) => s.parse(),
        None => Ok(Direction::Both),
    }
}

pub fn set(conn: &Connection, d: Direction) -> Result<()> {
    meta::set(conn, KEY, d.as_str())
}
