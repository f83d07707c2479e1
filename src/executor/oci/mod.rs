//! The `docker` engine: OCI images from any registry ([`crate::oci`]), run through youki's libcontainer in a
//! single-threaded helper process per container ([`runtime`]). (Glue: being implemented.)

pub mod egress;
pub mod netns;
pub mod runtime;
