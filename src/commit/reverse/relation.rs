//! Where the columns of a stream relation are, for the configured table it maps onto: refreshed on
//! every Relation message, read for every row.

use serde_json::{Map, Value as Json};

use crate::change::{Relation, RowImage, Value};
use crate::config::{SOURCE_COLUMN, owner};
use crate::transform::{Kind, Mapping};

/// Where a relation's columns are, for one configured table.
#[derive(Debug, Clone)]
pub struct RelationMap {
    pub table: usize,
    /// Position in the relation of each of the table's reverse columns.
    pub(super) columns: Vec<Option<usize>>,
    pub(super) names: Vec<String>,
    relation_columns: Vec<String>,
    source: Option<usize>,
    pub(super) cloud_key: Option<usize>,
    /// Positions of the desktop key columns (desktop-key tables).
    pub(super) key: Vec<usize>,
}

impl RelationMap {
    /// Maps a Relation message onto configured table `table`.
    pub fn new(mapping: &Mapping, table: usize, relation: &Relation) -> Self {
        let t = &mapping.tables[table];
        let position = |name: &str| relation.columns.iter().position(|c| c.name == name);
        let cloud_key = match &t.kind {
            Kind::Scoped { cloud_key, .. } => position(cloud_key),
            Kind::Key(_) => None,
        };
        let key = match &t.kind {
            Kind::Key(key) => key.iter().filter_map(|k| position(&k.name)).collect(),
            Kind::Scoped { .. } => Vec::new(),
        };
        RelationMap {
            table,
            columns: t
                .reverse_columns
                .iter()
                .map(|c| position(&c.name))
                .collect(),
            names: t.reverse_columns.iter().map(|c| c.name.clone()).collect(),
            relation_columns: relation.columns.iter().map(|c| c.name.clone()).collect(),
            source: position(SOURCE_COLUMN),
            cloud_key,
            key,
        }
    }

    /// The table's columns that travel back but the relation does not have (renamed or dropped in the
    /// cloud): rows of it would reach the desktop without them.
    pub fn missing(&self) -> Vec<&str> {
        self.names
            .iter()
            .zip(&self.columns)
            .filter(|(_, position)| position.is_none())
            .map(|(name, _)| name.as_str())
            .collect()
    }

    pub(super) fn is_mobile(&self, row: &RowImage) -> bool {
        matches!(self.source.and_then(|p| row.0.get(p)), Some(Value::Text(v)) if v.as_ref() == owner::MOBILE.as_bytes())
    }

    /// The row as a JSON object of its columns' texts (unchanged TOAST values left out).
    pub(super) fn json(&self, row: &RowImage) -> String {
        let mut map = Map::new();
        for (name, value) in self.relation_columns.iter().zip(&row.0) {
            match value {
                Value::Null => {
                    map.insert(name.clone(), Json::Null);
                }
                Value::Text(t) => {
                    map.insert(
                        name.clone(),
                        Json::String(String::from_utf8_lossy(t).into_owned()),
                    );
                }
                Value::UnchangedToast => {}
            }
        }
        Json::Object(map).to_string()
    }

    pub(super) fn text<'a>(&self, row: &'a RowImage, position: Option<usize>) -> Option<&'a [u8]> {
        match position.and_then(|p| row.0.get(p)) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        }
    }

    pub(super) fn key_of<'a>(&self, row: &'a RowImage) -> Vec<Option<&'a [u8]>> {
        self.key.iter().map(|&p| self.text(row, Some(p))).collect()
    }
}
