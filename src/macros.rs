//! Small macros shared by the services.

/// `get_ref`, `get_mut` and `into_inner` for a service that wraps `inner`,
/// as tower-http's services have.
macro_rules! accessors {
    ($service:ident) => {
        impl<S> $service<S> {
            /// The inner service.
            pub fn get_ref(&self) -> &S {
                &self.inner
            }

            /// The inner service, mutably.
            pub fn get_mut(&mut self) -> &mut S {
                &mut self.inner
            }

            /// The inner service, consuming this one.
            pub fn into_inner(self) -> S {
                self.inner
            }
        }
    };
}

pub(crate) use accessors;
