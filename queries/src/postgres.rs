//! The Postgres wire protocol front end (datafusion-postgres / pgwire), so psql, BI tools
//! and drivers can query tally. Owns connection authentication (user + password, where
//! the password is a query token) and hands every statement to [`QueryEngine`], which
//! checks it read-only and scopes it to the connection's principal — the same path as
//! the HTTP API. Must not execute anything itself: the datafusion-postgres session it
//! is given is empty, so no code path of that crate can reach the tables unscoped.
//!
//! Login: the password is a token whose sha256 hash is in `queries.admin_tokens` or
//! `queries.tenant_tokens`; with a tenant token the user name must be the tenant. Only
//! cleartext password authentication is offered (the server keeps token hashes, not
//! secrets), so put TLS in front when the listener leaves the machine. Results are sent
//! in text format.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use datafusion_postgres::pgwire::api::portal::Format;
use datafusion_postgres::pgwire::api::results::{QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::api::{
    ClientInfo, METADATA_USER, PgWireConnectionState, PgWireServerHandlers,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::startup::Authentication;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::pgwire::types::format::FormatOptions;
use datafusion_postgres::{DfSessionService, QueryHook};
use futures_util::{Sink, SinkExt, StreamExt};
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::engine::QueryEngine;
use crate::error::QueryError;
use crate::format::{flatten_nested, flatten_schema};
use crate::scope::Principal;

/// Connection metadata key holding the authenticated principal (set only by the
/// startup handler, after the password checked out).
const PRINCIPAL_KEY: &str = "tally.principal";

/// Serve the Postgres wire protocol on `addr` until the task is dropped.
pub async fn serve_postgres(engine: Arc<QueryEngine>, addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    serve_postgres_on(engine, listener).await
}

/// Serve the Postgres wire protocol on a bound listener (port 0 in tests).
pub async fn serve_postgres_on(
    engine: Arc<QueryEngine>,
    listener: TcpListener,
) -> std::io::Result<()> {
    let handlers = Arc::new(PgHandlers::new(engine));
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "queries: postgres listener failed to accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handlers = handlers.clone();
        tokio::spawn(async move {
            if let Err(e) =
                datafusion_postgres::pgwire::tokio::process_socket(socket, None, handlers).await
            {
                tracing::debug!(%peer, error = %e, "queries: postgres connection ended with an error");
            }
        });
    }
}

struct PgHandlers {
    service: Arc<DfSessionService>,
    startup: Arc<TallyStartup>,
}

impl PgHandlers {
    fn new(engine: Arc<QueryEngine>) -> Self {
        let auth = Authenticator::new(engine.config());
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(TransactionStatementHook),
            Arc::new(TallyHook { engine }),
        ];
        // An empty session: everything runs through the hooks above; a path that did
        // not would find no tables.
        let service = Arc::new(DfSessionService::new_with_hooks(
            Arc::new(SessionContext::new()),
            hooks,
        ));
        Self {
            service,
            startup: Arc::new(TallyStartup {
                auth,
                parameters: DefaultServerParameterProvider::default(),
            }),
        }
    }
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(
        &self,
    ) -> Arc<impl datafusion_postgres::pgwire::api::query::SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(
        &self,
    ) -> Arc<impl datafusion_postgres::pgwire::api::query::ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }
}

/// Cleartext password login checked against the token hashes.
struct TallyStartup {
    auth: Authenticator,
    parameters: DefaultServerParameterProvider,
}

fn principal_text(p: &Principal) -> String {
    match p {
        Principal::Admin => "admin".to_owned(),
        Principal::Tenant(t) => format!("tenant:{t}"),
    }
}

fn principal_of(client: &(impl ClientInfo + ?Sized)) -> PgWireResult<Principal> {
    match client.metadata().get(PRINCIPAL_KEY).map(String::as_str) {
        Some("admin") => Ok(Principal::Admin),
        Some(t) if t.starts_with("tenant:") => {
            Ok(Principal::Tenant(t["tenant:".len()..].to_owned()))
        }
        _ => Err(pg_error(&QueryError::Unauthorized(
            "the connection is not authenticated".to_owned(),
        ))),
    }
}

#[async_trait]
impl StartupHandler for TallyStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                // A startup parameter must never pose as the principal.
                client.metadata_mut().remove(PRINCIPAL_KEY);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                let principal = match self.auth.resolve(&pwd.password) {
                    Some(Principal::Tenant(t)) if t != user => None,
                    other => other,
                };
                let Some(principal) = principal else {
                    return Err(PgWireError::InvalidPassword(user));
                };
                client
                    .metadata_mut()
                    .insert(PRINCIPAL_KEY.to_owned(), principal_text(&principal));
                finish_authentication(client, &self.parameters).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Runs every statement through the engine as the connection's principal.
struct TallyHook {
    engine: Arc<QueryEngine>,
}

/// Session settings clients send on their own (drivers, psql); accepted and ignored.
fn is_client_setting(statement: &Statement) -> bool {
    const CLIENT_SETTINGS: [&str; 9] = [
        "application_name",
        "extra_float_digits",
        "datestyle",
        "intervalstyle",
        "client_encoding",
        "search_path",
        "bytea_output",
        "statement_timeout",
        "client_min_messages",
    ];
    match statement {
        Statement::Set(Set::SingleAssignment { variable, .. }) => {
            let name = variable.to_string().to_ascii_lowercase();
            CLIENT_SETTINGS.contains(&name.as_str())
        }
        Statement::Set(Set::SetTimeZone { .. }) => true,
        _ => false,
    }
}

/// SQLSTATE of each error kind.
fn sqlstate(e: &QueryError) -> &'static str {
    match e {
        QueryError::Sql(_) | QueryError::BadRequest(_) => "42601",
        QueryError::Forbidden(_) => "42501",
        QueryError::Timeout { .. } => "57014",
        QueryError::Memory { .. } => "53200",
        QueryError::Unauthorized(_) => "28000",
        QueryError::NotFound(_) => "42704",
        QueryError::NotAcceptable(_) => "0A000",
        QueryError::Table { .. } => "58030",
        QueryError::Execution(_)
        | QueryError::Output(_)
        | QueryError::Config(_)
        | QueryError::Internal(_) => "XX000",
    }
}

fn pg_error(e: &QueryError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_owned(),
        sqlstate(e).to_owned(),
        e.to_string(),
    )))
}

impl TallyHook {
    async fn respond(
        &self,
        statement: &Statement,
        params: Vec<datafusion::common::ScalarValue>,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> PgWireResult<Response> {
        let principal = principal_of(client)?;
        if is_client_setting(statement) {
            return Ok(Response::Execution(Tag::new("SET")));
        }
        let stream = self
            .engine
            .execute_with_params(&statement.to_string(), params, &principal)
            .await
            .map_err(|e| pg_error(&e))?;
        let schema = flatten_schema(&stream.schema());
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(arrow_schema_to_pg_fields(
            &schema,
            &Format::UnifiedText,
            Some(options),
        )?);
        let row_fields = fields.clone();
        let rows = stream
            .map(move |batch| {
                let encoded: Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> = match batch
                    .map_err(QueryError::from)
                    .and_then(|b| flatten_nested(&b))
                {
                    Ok(b) => encode_recordbatch(row_fields.clone(), b),
                    Err(e) => Box::new(std::iter::once(Err(pg_error(&e)))),
                };
                futures_util::stream::iter(encoded)
            })
            .flatten();
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }
}

#[async_trait]
impl QueryHook for TallyHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        Some(self.respond(statement, Vec::new(), &*client).await)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        let plan = async {
            let principal = principal_of(client)?;
            if is_client_setting(statement) {
                return Ok(LogicalPlan::EmptyRelation(EmptyRelation {
                    produce_one_row: false,
                    schema: Arc::new(datafusion::common::DFSchema::empty()),
                }));
            }
            self.engine
                .logical_plan(&statement.to_string(), &principal)
                .await
                .map_err(|e| pg_error(&e))
        };
        Some(plan.await)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        params: &ParamValues,
        _session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let params = match params {
            ParamValues::List(list) => list.iter().map(|p| p.value.clone()).collect(),
            ParamValues::Map(_) => {
                return Some(Err(pg_error(&QueryError::Sql(
                    "named parameters are not supported; use $1, $2, ...".to_owned(),
                ))));
            }
        };
        Some(self.respond(statement, params, &*client).await)
    }
}
