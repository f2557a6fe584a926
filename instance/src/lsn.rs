//! WAL positions (`pg_lsn`) as PostgreSQL prints them (`X/Y`) and their byte
//! distance. The type is the API's, defined once in
//! [`stead_crds::instance_api`] for the instance manager and the controller.

pub use stead_crds::instance_api::{Lsn, LsnParseError};
