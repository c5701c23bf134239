//! Which resources handlers take, and whether what runs them provides
//! them: checked when the handlers are mounted, not at their first
//! delivery.

use std::any::{type_name, TypeId};
use std::fmt;

use http::Extensions;

/// A type a handler argument takes from the delivery's resources (a
/// [`Resource<T>`](super::Resource), a `Tx`), or a type a delivery backend
/// provides.
#[derive(Clone, Copy)]
pub struct ResourceType {
    id: TypeId,
    name: &'static str,
    present: fn(&Extensions) -> bool,
}

impl ResourceType {
    /// The resource of type `T`.
    pub fn of<T: Send + Sync + 'static>() -> Self {
        Self {
            id: TypeId::of::<T>(),
            name: type_name::<T>(),
            present: |resources| resources.get::<T>().is_some(),
        }
    }

    /// The type's name, as [`std::any::type_name`] spells it.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether `resources` holds one.
    pub fn is_in(&self, resources: &Extensions) -> bool {
        (self.present)(resources)
    }
}

impl PartialEq for ResourceType {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for ResourceType {}

impl fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// A handler takes a resource that what runs it does not provide: the
/// handlers were mounted behind a delivery layer, a
/// [`Receiver`](crate::Receiver) or inbox workers whose backend cannot give
/// it (a handler that takes `Tx` behind the default memory store, say).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingResource {
    /// The event types of the handler, as registered (`message.created`,
    /// `every known event type`).
    pub event_types: String,
    /// The argument's resource type.
    pub resource: &'static str,
    /// What runs the handlers: the backend's type, or a description.
    pub provider: String,
}

impl fmt::Display for MissingResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the handler of {} takes {}, which {} does not provide",
            self.event_types, self.resource, self.provider
        )?;
        #[cfg(feature = "postgres")]
        if self.resource == type_name::<crate::store::postgres::Tx>() {
            f.write_str(": give the layer a PostgresBackend (`.backend(PostgresBackend::new(pool))`), or run the handlers on an inbox's workers")?;
        }
        Ok(())
    }
}

impl std::error::Error for MissingResource {}

/// What a delivery backend declares it provides, with a name for messages.
#[derive(Debug, Clone)]
pub struct Provided<'a> {
    /// The resource types; `None` when not declared, and so not checked
    /// before the first delivery.
    pub types: Option<&'a [ResourceType]>,
    /// What provides them, for messages: a backend's type, say.
    pub provider: &'a str,
}

/// One registered handler's resource arguments.
#[derive(Clone, Debug, Default)]
pub(super) struct Needs {
    pub(super) event_types: String,
    pub(super) resources: Vec<ResourceType>,
}

impl Needs {
    pub(super) fn first_missing(&self, provided: &Provided<'_>) -> Option<MissingResource> {
        let types = provided.types?;
        let missing = self.resources.iter().find(|r| !types.contains(r))?;
        Some(MissingResource {
            event_types: self.event_types.clone(),
            resource: missing.name,
            provider: provided.provider.to_owned(),
        })
    }

    pub(super) fn first_absent(&self, resources: &Extensions) -> Option<MissingResource> {
        let missing = self.resources.iter().find(|r| !r.is_in(resources))?;
        Some(MissingResource {
            event_types: self.event_types.clone(),
            resource: missing.name,
            provider: "what runs these handlers (the delivery layer's backend, and any layer in front of them)".to_owned(),
        })
    }
}
