//! Identifier newtypes. Bacalhau's forms: jobs `j-<uuid4>`, executions `e-<uuid4>`, evaluations a plain UUID.
//! A node's id is its libp2p peer id in text form, which is stable across restarts (the key lives in the data
//! dir), unlike Bacalhau's `n-<uuid>` that issue #4460 complains about.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id with this type's prefix.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, uuid::Uuid::new_v4()))
            }
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// The short form shown in tables: the prefix and the first UUID block.
            pub fn short(&self) -> &str {
                let end = self.0[$prefix.len()..]
                    .find('-')
                    .map(|i| i + $prefix.len())
                    .unwrap_or(self.0.len());
                &self.0[..end]
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(Self(s.to_owned()))
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

id_type!(
    /// A job's id (`j-<uuid4>`).
    JobId,
    "j-"
);
id_type!(
    /// An execution's id (`e-<uuid4>`).
    ExecutionId,
    "e-"
);
id_type!(
    /// An evaluation's id (a plain UUID).
    EvaluationId,
    ""
);
id_type!(
    /// A node's id: its libp2p peer id in text form.
    NodeId,
    ""
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_prefix_and_short_form() {
        let j = JobId::generate();
        assert!(j.as_str().starts_with("j-"));
        assert_eq!(j.short().len(), 2 + 8);
        let e = ExecutionId::generate();
        assert!(e.as_str().starts_with("e-"));
    }
}
