//! [`ConnectorError`]: why a connector as a whole could not start, poll, put or stop. A single
//! record's failure is not one of these: it goes to the record's callback.

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Anything else, worded for the connector's status.
    #[error("{message}")]
    Failed {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl ConnectorError {
    pub fn failed(message: impl Into<String>) -> ConnectorError {
        ConnectorError::Failed {
            message: message.into(),
            source: None,
        }
    }

    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ConnectorError {
        ConnectorError::Failed {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}
