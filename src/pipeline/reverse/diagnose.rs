//! What a replication stream error means: the transport's own failures by their variant, a server
//! error by what the cloud says about the slot and the publication.

use crate::change::Side;
use crate::config::Config;
use crate::db::{self, ErrorKind};
use crate::setup::cloud::{publication_state, slot_state};

use crate::pipeline::{RunError, StreamError};

/// Classifies a transport error where it is raised: its own failures by their variant; a server error
/// (flattened to text by the transport) is `Fatal` until [`diagnose`] asks the cloud.
pub(super) fn stream_error(e: pgwire_replication::error::PgWireError) -> RunError {
    use pgwire_replication::error::PgWireError as E;
    let kind = match &e {
        E::Io(_) | E::Task(_) | E::Protocol(_) => ErrorKind::Transient,
        // A wrong password, a certificate that fails verification, a frame over the limit, the server
        // refusing: retrying as such cannot help (a server error is diagnosed before giving up).
        _ => ErrorKind::Fatal,
    };
    RunError::Stream(StreamError {
        kind,
        message: e.to_string(),
    })
}

/// A server error on the replication stream (the transport gives only its text): what the cloud says
/// about the slot and the publication tells whether retrying can help, and the fix when it cannot.
pub(super) async fn diagnose(config: &Config, stream: StreamError) -> RunError {
    let cloud = match db::connect(Side::Cloud, &config.cloud.url).await {
        Ok(cloud) => cloud,
        Err(e) => return e.into(),
    };
    let slot = &config.cloud.slot;
    let publication = &config.cloud.publication;
    let fatal = |message: String| {
        RunError::Stream(StreamError {
            kind: ErrorKind::Fatal,
            message: format!("{message} (the server said: {})", stream.message),
        })
    };
    match slot_state(&cloud, slot).await {
        Err(e) => return e.into(),
        Ok(None) => {
            return fatal(format!(
                "replication slot {slot} does not exist; fix: run `tandem init` to create it (changes made \
                 while it was missing did not stream: repair them with `tandem reconcile`)"
            ));
        }
        Ok(Some(state)) => {
            if let Some((problem, fix)) = state.problem(slot) {
                return fatal(format!("{problem}; fix: {fix}"));
            }
        }
    }
    match publication_state(&cloud, publication).await {
        Err(e) => e.into(),
        Ok(None) => fatal(format!(
            "publication {publication} does not exist; fix: run `tandem init` to create it"
        )),
        // The slot and the publication are fine: a passing problem (the slot busy with another
        // connection, the server restarting).
        Ok(Some(_)) => RunError::Stream(StreamError {
            kind: ErrorKind::Transient,
            message: stream.message,
        }),
    }
}
