//! How `tandem conflicts list` shows a conflict to a person: a head line (id, where it is recorded,
//! table, row key, kind, policy, and the outcome or how to choose one), then what choosing, or
//! checking a policy's choice, needs: the columns both sides changed, each side's transaction, the
//! three versions and the result. A record of the older shape has no kind nor versions: it shows its
//! reason and its incoming and current rows instead.

use std::fmt;

use super::Conflict;

/// A JSON value as text, or `null` for none.
fn json(v: &Option<serde_json::Value>, null: &str) -> String {
    v.as_ref()
        .map_or_else(|| null.to_string(), |v| v.to_string())
}

fn or_dash<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), |v| v.to_string())
}

impl Conflict {
    /// The outcome as the head line says it: what it came to, or how to choose.
    fn outcome_text(&self) -> String {
        match (
            &self.resolved_at,
            self.outcome.as_ref().or(self.resolution.as_ref()),
        ) {
            (None, _) => format!(
                "open: choose with tandem conflicts resolve {} --keep desktop|mobile",
                self.id
            ),
            (Some(_), Some(outcome)) => format!("outcome {outcome}"),
            (Some(_), None) => "resolved".into(),
        }
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}: {}, policy {}, {}",
            self.id,
            self.direction,
            self.table,
            json(&self.row_key, "-"),
            self.kind.as_deref().unwrap_or("kind unknown"),
            or_dash(&self.policy),
            self.outcome_text()
        )?;
        write!(f, "\n    detected {}", self.detected_at)?;
        if let Some(at) = &self.resolved_at {
            write!(
                f,
                ", settled {at} by {}",
                self.resolved_by.as_deref().unwrap_or("?")
            )?;
        }
        let Some(kind) = &self.kind else {
            return write!(
                f,
                "\n    reason:   {}\n    incoming: {}\n    current:  {}",
                self.reason,
                json(&self.incoming, "-"),
                json(&self.current, "-")
            );
        };
        let columns = self
            .columns
            .as_ref()
            .map_or_else(|| "-".to_string(), |c| c.join(", "));
        write!(f, "\n    columns in conflict: {columns}")?;
        write!(
            f,
            "\n    desktop changed {} (desktop xid {})",
            or_dash(&self.desktop_at),
            or_dash(&self.desktop_xid)
        )?;
        write!(
            f,
            "\n    mobile committed {} (cloud commit LSN {}, cloud xid {})",
            or_dash(&self.mobile_at),
            or_dash(&self.cloud_lsn),
            or_dash(&self.cloud_xid)
        )?;
        let no_base = if kind == "insert/insert" {
            "none (both created the row)"
        } else {
            "unknown"
        };
        let no_result = if self.resolved_at.is_none() {
            "none yet (open)"
        } else {
            "deleted"
        };
        write!(
            f,
            "\n    base:    {}\n    desktop: {}\n    mobile:  {}\n    result:  {}",
            json(&self.base, no_base),
            json(&self.desktop_row, "deleted"),
            json(&self.mobile_row, "deleted"),
            json(&self.result, no_result)
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Conflict;

    fn old_shape() -> Conflict {
        Conflict {
            id: "f3".into(),
            direction: "forward".into(),
            table: "public.item".into(),
            detected_at: "2026-12-07T10:00:00Z".into(),
            row_key: Some(json!({"id": 1})),
            incoming: Some(json!({"id": 1, "name": "desk"})),
            current: Some(json!({"id": 1, "name": "phone"})),
            reason: "the row is mobile-owned".into(),
            resolved_at: None,
            resolution: None,
            resolved_by: None,
            kind: None,
            base: None,
            desktop_row: None,
            mobile_row: None,
            columns: None,
            desktop_at: None,
            mobile_at: None,
            cloud_lsn: None,
            cloud_xid: None,
            desktop_xid: None,
            policy: None,
            outcome: None,
            result: None,
        }
    }

    fn settled() -> Conflict {
        Conflict {
            id: "r7".into(),
            direction: "reverse".into(),
            row_key: Some(json!({"id": "1"})),
            reason: "update/update: settled by policy latest".into(),
            resolved_at: Some("2026-12-07T10:00:01Z".into()),
            resolution: Some("mobile".into()),
            resolved_by: Some("policy latest".into()),
            kind: Some("update/update".into()),
            base: Some(json!({"id": "1", "price": "1.00"})),
            desktop_row: Some(json!({"id": "1", "price": "2.00"})),
            mobile_row: Some(json!({"id": "1", "price": "3.00"})),
            columns: Some(vec!["price".into()]),
            desktop_at: Some("2026-12-07T09:59:59.250000Z".into()),
            mobile_at: Some("2026-12-07T10:00:00.500000Z".into()),
            cloud_lsn: Some("0/1A2B3C4".into()),
            cloud_xid: Some(900),
            desktop_xid: Some(812),
            policy: Some("latest".into()),
            outcome: Some("mobile".into()),
            result: Some(json!({"id": "1", "price": "3.00"})),
            ..old_shape()
        }
    }

    #[test]
    fn a_settled_conflict_shows_its_outcome_transactions_and_versions() {
        let text = settled().to_string();
        assert_eq!(
            text,
            "r7 reverse public.item {\"id\":\"1\"}: update/update, policy latest, outcome mobile\n    \
             detected 2026-12-07T10:00:00Z, settled 2026-12-07T10:00:01Z by policy latest\n    \
             columns in conflict: price\n    \
             desktop changed 2026-12-07T09:59:59.250000Z (desktop xid 812)\n    \
             mobile committed 2026-12-07T10:00:00.500000Z (cloud commit LSN 0/1A2B3C4, cloud xid 900)\n    \
             base:    {\"id\":\"1\",\"price\":\"1.00\"}\n    \
             desktop: {\"id\":\"1\",\"price\":\"2.00\"}\n    \
             mobile:  {\"id\":\"1\",\"price\":\"3.00\"}\n    \
             result:  {\"id\":\"1\",\"price\":\"3.00\"}"
        );
    }

    #[test]
    fn an_open_conflict_says_how_to_choose_and_names_deletes() {
        let open = Conflict {
            kind: Some("update/delete".into()),
            policy: Some("manual".into()),
            outcome: None,
            resolved_at: None,
            resolution: None,
            resolved_by: None,
            mobile_row: None,
            result: None,
            ..settled()
        };
        let text = open.to_string();
        assert!(
            text.starts_with(
                "r7 reverse public.item {\"id\":\"1\"}: update/delete, policy manual, open: choose \
                 with tandem conflicts resolve r7 --keep desktop|mobile\n    detected 2026-12-07T10:00:00Z\n"
            ),
            "{text}"
        );
        assert!(text.contains("\n    mobile:  deleted\n"), "{text}");
        assert!(text.ends_with("\n    result:  none yet (open)"), "{text}");
    }

    #[test]
    fn insert_insert_has_no_base() {
        let both = Conflict {
            kind: Some("insert/insert".into()),
            base: None,
            ..settled()
        };
        assert!(
            both.to_string()
                .contains("\n    base:    none (both created the row)\n"),
            "{both}"
        );
    }

    #[test]
    fn an_old_shape_record_shows_its_reason_and_rows() {
        assert_eq!(
            old_shape().to_string(),
            "f3 forward public.item {\"id\":1}: kind unknown, policy -, open: choose with tandem \
             conflicts resolve f3 --keep desktop|mobile\n    detected 2026-12-07T10:00:00Z\n    \
             reason:   the row is mobile-owned\n    \
             incoming: {\"id\":1,\"name\":\"desk\"}\n    \
             current:  {\"id\":1,\"name\":\"phone\"}"
        );
        let resolved = Conflict {
            resolved_at: Some("2026-12-07T11:00:00Z".into()),
            resolution: Some("desktop".into()),
            resolved_by: Some("ana (tandem conflicts resolve)".into()),
            ..old_shape()
        };
        assert!(
            resolved.to_string().starts_with(
                "f3 forward public.item {\"id\":1}: kind unknown, policy -, outcome desktop\n    \
                 detected 2026-12-07T10:00:00Z, settled 2026-12-07T11:00:00Z by ana (tandem conflicts resolve)\n"
            ),
            "{resolved}"
        );
    }
}
