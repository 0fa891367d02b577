//! Typed resources over any [`Datastore`]: validation on every write, compare-and-swap on the
//! revision each resource carries in `metadata.resourceVersion`.

use std::sync::Arc;

use crate::keys;
use crate::resource::{self, Node, Resource, Spec, ValidationError, Validator};
use crate::store::{Datastore, KeyValue, Revision};
use crate::{Error, Result};

/// What [`Client::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The resource did not exist and was created.
    Created,
    /// The resource existed and was replaced.
    Replaced,
    /// The resource existed with exactly this content; nothing was written.
    Unchanged,
}

/// How often apply and replace retry when another writer wins the race in between.
const RACE_RETRIES: usize = 5;

/// Reads and writes typed resources.
#[derive(Debug, Clone)]
pub struct Client {
    store: Arc<dyn Datastore>,
}

fn decode<S: Spec>(kv: &KeyValue) -> Result<Resource<S>> {
    let mut r =
        resource::from_slice::<S>(&kv.value).map_err(|e| Error::Invalid(format!("stored value at {}: {e}", kv.key)))?;
    r.metadata.resource_version = Some(kv.revision.to_string());
    Ok(r)
}

fn encode<S: Spec>(r: &Resource<S>) -> Result<Vec<u8>> {
    // The revision is the store's business: it is never stored inside the value.
    let mut stored = r.clone();
    stored.metadata.resource_version = None;
    serde_json::to_vec(&stored).map_err(|e| Error::Invalid(format!("cannot encode {}: {e}", S::KIND)))
}

impl Client {
    /// A client over `store`.
    pub fn new(store: Arc<dyn Datastore>) -> Self {
        Client { store }
    }

    /// The underlying key-value store.
    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    /// Reads one resource (`namespace` only for namespaced kinds).
    pub async fn get<S: Spec>(&self, namespace: Option<&str>, name: &str) -> Result<Resource<S>> {
        let key = keys::resource::<S>(namespace, name);
        match self.store.get(&key).await {
            Ok(kv) => decode(&kv),
            Err(Error::NotFound(_)) => Err(Error::NotFound(format!("{} \"{name}\"", S::KIND))),
            Err(e) => Err(e),
        }
    }

    /// Reads a resource, or `None` when it does not exist.
    pub async fn find<S: Spec>(&self, namespace: Option<&str>, name: &str) -> Result<Option<Resource<S>>> {
        match self.get(namespace, name).await {
            Ok(r) => Ok(Some(r)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads every resource of a kind (all namespaces), sorted by key, with the store
    /// revision of the listing.
    pub async fn list<S: Spec>(&self) -> Result<(Vec<Resource<S>>, Revision)> {
        let listing = self.store.list(&keys::kind_prefix::<S>()).await?;
        let items = listing.items.iter().map(decode).collect::<Result<_>>()?;
        Ok((items, listing.revision))
    }

    /// Creates a resource after filling its defaults and validating it.
    ///
    /// Kinds whose resources can conflict with each other (overlapping pools) are created
    /// under a guard, so two writers cannot both pass the check: each reads the guard key,
    /// checks against the others, creates, then bumps the guard by compare-and-swap on the
    /// revision it read. A writer whose bump fails took part in a race it may have lost: it
    /// deletes what it created and checks again against what the winner created.
    pub async fn create<S: Spec>(&self, mut r: Resource<S>) -> Result<Resource<S>> {
        r.spec.complete();
        r.validate()?;
        let key = keys::resource::<S>(r.metadata.namespace.as_deref(), &r.metadata.name);
        let value = encode(&r)?;
        let mut attempt = 0;
        loop {
            let guard = if S::HAS_CONFLICTS { Some(self.guard_revision::<S>().await?) } else { None };
            self.check_conflicts(&r, true).await?;
            let revision = self.store.create(&key, &value).await.map_err(|e| match e {
                Error::AlreadyExists(_) => Error::AlreadyExists(format!("{} \"{}\"", S::KIND, r.metadata.name)),
                other => other,
            })?;
            let Some(guard) = guard else {
                r.metadata.resource_version = Some(revision.to_string());
                return Ok(r);
            };
            let guard_key = keys::create_guard::<S>();
            // The value changes with every bump: a store may take an unchanged value as no write
            // at all (the Kubernetes API does), and the bump must be one.
            let bumped = match guard {
                Some(expected) => {
                    let value = format!("{{\"after\":{expected}}}");
                    self.store.update(&guard_key, value.as_bytes(), expected).await.map(drop)
                }
                None => self.store.create(&guard_key, b"{}").await.map(drop),
            };
            match bumped {
                Ok(()) => {
                    r.metadata.resource_version = Some(revision.to_string());
                    return Ok(r);
                }
                Err(Error::Conflict { .. } | Error::AlreadyExists(_) | Error::NotFound(_))
                    if attempt < RACE_RETRIES =>
                {
                    attempt += 1;
                    self.store.delete(&key, Some(revision)).await?;
                }
                Err(e) => {
                    // Unknown whether another writer raced: take the resource back rather than
                    // risk a conflict no check saw.
                    let _ = self.store.delete(&key, Some(revision)).await;
                    return Err(e);
                }
            }
        }
    }

    /// The revision of the create guard of kind `S` (`None`: not written yet).
    async fn guard_revision<S: Spec>(&self) -> Result<Option<Revision>> {
        match self.store.get(&keys::create_guard::<S>()).await {
            Ok(kv) => Ok(Some(kv.revision)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces a resource. `r.metadata.resourceVersion` must be the revision it was read at;
    /// a newer write in between is a [`Error::Conflict`].
    pub async fn update<S: Spec>(&self, mut r: Resource<S>) -> Result<Resource<S>> {
        let Some(expected) = r.revision() else {
            return Err(Error::Invalid(format!(
                "{} \"{}\": metadata.resourceVersion is required to update (read the resource first)",
                S::KIND,
                r.metadata.name
            )));
        };
        let namespace = r.metadata.namespace.clone();
        let old = self.get::<S>(namespace.as_deref(), &r.metadata.name).await?;
        r.spec.complete();
        r.validate_update(&old)?;
        self.check_conflicts(&r, false).await?;
        let key = keys::resource::<S>(namespace.as_deref(), &r.metadata.name);
        let revision = self.store.update(&key, &encode(&r)?, expected).await?;
        r.metadata.resource_version = Some(revision.to_string());
        Ok(r)
    }

    /// Replaces an existing resource. With `metadata.resourceVersion` set, only if it is
    /// still at that revision (a [`Error::Conflict`] otherwise); without, whatever is stored
    /// is replaced.
    pub async fn replace<S: Spec>(&self, r: Resource<S>) -> Result<Resource<S>> {
        if r.revision().is_some() {
            return self.update(r).await;
        }
        let namespace = r.metadata.namespace.clone();
        let mut attempt = 0;
        loop {
            let current = self.get::<S>(namespace.as_deref(), r.name()).await?;
            let mut next = r.clone();
            next.metadata.resource_version = current.metadata.resource_version;
            match self.update(next).await {
                Err(Error::Conflict { .. }) if attempt < RACE_RETRIES => attempt += 1,
                done => return done,
            }
        }
    }

    /// Creates the resource, or replaces it when it exists (see [`Client::replace`]); writes
    /// nothing when what is stored is already exactly this.
    pub async fn apply<S: Spec>(&self, r: Resource<S>) -> Result<(Resource<S>, Applied)> {
        let namespace = r.metadata.namespace.clone();
        let mut attempt = 0;
        loop {
            let outcome = match self.find::<S>(namespace.as_deref(), r.name()).await? {
                None => self.create(r.clone()).await.map(|r| (r, Applied::Created)),
                Some(current) => {
                    let mut wanted = r.clone();
                    wanted.spec.complete();
                    if wanted.spec == current.spec
                        && wanted.metadata.labels == current.metadata.labels
                        && wanted.metadata.annotations == current.metadata.annotations
                    {
                        return Ok((current, Applied::Unchanged));
                    }
                    if wanted.revision().is_none() {
                        wanted.metadata.resource_version = current.metadata.resource_version;
                    }
                    self.update(wanted).await.map(|r| (r, Applied::Replaced))
                }
            };
            match outcome {
                Err(Error::AlreadyExists(_) | Error::Conflict { .. })
                    if attempt < RACE_RETRIES && r.revision().is_none() =>
                {
                    attempt += 1
                }
                done => return done,
            }
        }
    }

    /// Deletes a resource; with `expected`, only if it is still at that revision.
    pub async fn delete<S: Spec>(&self, namespace: Option<&str>, name: &str, expected: Option<Revision>) -> Result<()> {
        let key = keys::resource::<S>(namespace, name);
        self.store.delete(&key, expected).await.map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(format!("{} \"{name}\"", S::KIND)),
            other => other,
        })
    }

    /// Checks the resource against the others of its kind (e.g. overlapping pools) and, when
    /// `creating`, against the nodes (e.g. a pool holding a node's address: one that came to
    /// hold one, a node registered later, can still be changed, say disabled).
    async fn check_conflicts<S: Spec>(&self, r: &Resource<S>, creating: bool) -> Result<()> {
        let mut v = Validator::new(S::KIND, &r.metadata.name);
        if S::HAS_CONFLICTS {
            let (others, _) = self.list::<S>().await?;
            let is_other =
                |o: &&Resource<S>| o.metadata.name != r.metadata.name || o.metadata.namespace != r.metadata.namespace;
            for other in others.iter().filter(is_other) {
                r.spec.check_conflict(other, &mut v);
            }
        }
        if creating && S::CONFLICTS_WITH_NODES {
            for node in self.list::<Node>().await?.0 {
                r.spec.check_node(&node, &mut v);
            }
        }
        v.finish().map_err(|e: ValidationError| e.into())
    }
}

/// A resource of any kind through a [`Client`]: the kind's own call, chosen by name.
mod any {
    use futures::future::BoxFuture;

    use super::{Applied, Client};
    use crate::resource::{AnyResource, KINDS, KindVisitor, Resource, ResourceVisitor, Spec, visit_kind};
    use crate::{Error, Result};

    fn unknown(kind: &str) -> Error {
        Error::Invalid(format!("unknown kind \"{kind}\" (known: {})", KINDS.join(", ")))
    }

    struct List<'a>(&'a Client);

    impl<'a> KindVisitor for List<'a> {
        type Output = BoxFuture<'a, Result<Vec<AnyResource>>>;
        fn visit<S: Spec>(self, wrap: fn(Resource<S>) -> AnyResource) -> Self::Output {
            Box::pin(async move { Ok(self.0.list::<S>().await?.0.into_iter().map(wrap).collect()) })
        }
    }

    struct Get<'a> {
        client: &'a Client,
        namespace: Option<&'a str>,
        name: &'a str,
    }

    impl<'a> KindVisitor for Get<'a> {
        type Output = BoxFuture<'a, Result<AnyResource>>;
        fn visit<S: Spec>(self, wrap: fn(Resource<S>) -> AnyResource) -> Self::Output {
            Box::pin(async move { self.client.get::<S>(self.namespace, self.name).await.map(wrap) })
        }
    }

    struct Delete<'a> {
        client: &'a Client,
        resource: &'a AnyResource,
    }

    impl<'a> KindVisitor for Delete<'a> {
        type Output = BoxFuture<'a, Result<()>>;
        fn visit<S: Spec>(self, _: fn(Resource<S>) -> AnyResource) -> Self::Output {
            let metadata = self.resource.metadata();
            let revision = metadata.resource_version.as_deref().and_then(|v| v.parse().ok());
            Box::pin(self.client.delete::<S>(metadata.namespace.as_deref(), &metadata.name, revision))
        }
    }

    /// Which write.
    #[derive(Clone, Copy)]
    enum Write {
        Create,
        Replace,
        Apply,
    }

    struct Writer<'a>(&'a Client, Write);

    impl<'a> ResourceVisitor for Writer<'a> {
        type Output = BoxFuture<'a, Result<(AnyResource, Applied)>>;
        fn visit<S: Spec>(self, r: Resource<S>, wrap: fn(Resource<S>) -> AnyResource) -> Self::Output {
            let Writer(client, write) = self;
            Box::pin(async move {
                let (r, done) = match write {
                    Write::Create => (client.create(r).await?, Applied::Created),
                    Write::Replace => (client.replace(r).await?, Applied::Replaced),
                    Write::Apply => client.apply(r).await?,
                };
                Ok((wrap(r), done))
            })
        }
    }

    impl AnyResource {
        /// Every resource of `kind` (a name from [`KINDS`]), sorted by key.
        pub async fn list(client: &Client, kind: &str) -> Result<Vec<AnyResource>> {
            visit_kind(kind, List(client)).ok_or_else(|| unknown(kind))?.await
        }

        /// One resource of `kind` by name.
        pub async fn get(client: &Client, kind: &str, namespace: Option<&str>, name: &str) -> Result<AnyResource> {
            visit_kind(kind, Get { client, namespace, name }).ok_or_else(|| unknown(kind))?.await
        }

        /// Creates it; an error if it exists.
        pub async fn create(self, client: &Client) -> Result<AnyResource> {
            self.visit(Writer(client, Write::Create)).await.map(|(r, _)| r)
        }

        /// Replaces it; an error if it does not exist. See [`Client::replace`].
        pub async fn replace(self, client: &Client) -> Result<AnyResource> {
            self.visit(Writer(client, Write::Replace)).await.map(|(r, _)| r)
        }

        /// Creates or replaces it. See [`Client::apply`].
        pub async fn apply(self, client: &Client) -> Result<(AnyResource, Applied)> {
            self.visit(Writer(client, Write::Apply)).await
        }

        /// Deletes it (at its revision, when it carries one).
        pub async fn delete(&self, client: &Client) -> Result<()> {
            visit_kind(self.kind(), Delete { client, resource: self }).ok_or_else(|| unknown(self.kind()))?.await
        }
    }
}
