//! `ponte`: the identity bridge's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ponte_identity::client::{ClientRepo, GrantType, NewClient, SqlClients};
use ponte_identity::clock::{Clock, SystemClock};
use ponte_server::worker::Worker;
use ponte_server::{Application, Config, app, install_crypto_provider, openapi, telemetry};

#[derive(Debug, Parser)]
#[command(name = "ponte", version, about = "Ponte: identity bridge for POS and e-invoicing")]
struct Cli {
    /// Configuration file (default: ./ponte.toml when present).
    #[arg(long, global = true, env = "PONTE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (with the background worker unless worker.enabled = false).
    Serve,
    /// Run only the background worker that delivers mail and other jobs.
    Worker,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage OAuth clients.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Manage token signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the OpenAPI document (the one checked in under openapi/).
    Openapi,
    /// Exit 0 when `ponte serve` on this host answers /healthz (a container HEALTHCHECK
    /// without a shell or curl in the image).
    Healthcheck,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Promote the next key to current now (running servers pick it up within
    /// key_reload_secs); prints {"current", "next", "previous"} as JSON.
    Rotate,
    /// Rotate the master key. Embedded mode: writes a new key file to the data folder,
    /// keeps the old one as retired, then re-seals. With PONTE_MASTER_KEY: prints the steps.
    RotateMaster,
    /// Re-seal every stored secret with the active master key, in small batches; prints
    /// {"resealed", "skipped", "remaining"} (remaining 0: the retired keys can be dropped).
    Reseal,
}

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Register a client; prints {"client_id", "client_secret"} once, as JSON.
    Create {
        /// Human name.
        #[arg(long)]
        name: String,
        /// Allowed grant (repeat): client_credentials, authorization_code, refresh_token.
        #[arg(long = "grant", required = true)]
        grants: Vec<String>,
        /// Allowed scope (repeat), e.g. ponte.admin.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Exact redirect URI (repeat), for browser flows.
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// Exact URI the browser may return to after logout (repeat).
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// A first-party app: users are not asked for consent.
        #[arg(long)]
        first_party: bool,
        /// A public client (no secret): a browser or native app using PKCE.
        #[arg(long)]
        public: bool,
    },
}

fn main() -> ExitCode {
    install_crypto_provider();
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ponte: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ponte: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ponte: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> Result<(), String> {
    match command {
        Command::Serve => {
            let bind = config.bind.clone();
            let public_url = config.public_url.clone();
            let application = Application::build(config).await.map_err(|e| e.to_string())?;
            tracing::info!(%bind, port = application.port(), %public_url, "ponte is serving");
            application.run_until_stopped().await.map_err(|e| e.to_string())
        }
        Command::Worker => {
            let clock: Arc<dyn Clock> = Arc::new(SystemClock);
            let state = app::build_state(config, clock).await.map_err(|e| e.to_string())?;
            let worker = Worker::from_state(&state)?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                app::shutdown_signal().await;
                let _ = stop.send(true);
            });
            worker.run(stopped).await;
            Ok(())
        }
        Command::Migrate => {
            let db = app::open_database(&config).map_err(|e| e.to_string())?;
            app::migrate(&db).await.map_err(|e| e.to_string())?;
            println!("migrations applied");
            Ok(())
        }
        Command::Client(ClientCommand::Create {
            name,
            grants,
            scopes,
            redirect_uris,
            post_logout_redirect_uris,
            first_party,
            public,
        }) => {
            let grants = grants
                .iter()
                .map(|g| GrantType::parse(g).ok_or_else(|| format!("unknown grant {g:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            let db = app::open_database(&config).map_err(|e| e.to_string())?;
            if config.migrate_on_start {
                app::migrate(&db).await.map_err(|e| e.to_string())?;
            }
            let repo = SqlClients::new(db);
            let new = NewClient { name, grants, scopes, redirect_uris, post_logout_redirect_uris, first_party, public };
            let (client, secret) = repo.create(new, SystemClock.now()).await.map_err(|e| e.to_string())?;
            let out = serde_json::json!({ "client_id": client.id, "client_secret": secret });
            println!("{out}");
            Ok(())
        }
        Command::Keys(KeysCommand::Rotate) => {
            let db = app::open_database(&config).map_err(|e| e.to_string())?;
            if config.migrate_on_start {
                app::migrate(&db).await.map_err(|e| e.to_string())?;
            }
            let master = app::master_key(&config).map_err(|e| e.to_string())?;
            let repo = ponte_identity::keys::SqlKeys::new(db);
            let rotation = ponte_identity::keys::rotate(&repo, &master, &config.key_policy(), SystemClock.now())
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string(&rotation).map_err(|e| e.to_string())?);
            Ok(())
        }
        Command::Keys(KeysCommand::RotateMaster) => {
            if config.master_key.is_some() {
                let new = ponte_identity::seal::MasterKeys::generate().encode();
                println!(
                    "The master key comes from PONTE_MASTER_KEY, so rotate it where it is kept:\n\
                     1. a new key (this one is fresh): {new}\n\
                     2. set it as PONTE_MASTER_KEY and add the old key to PONTE_MASTER_KEYS_RETIRED \
                     (comma-separated) on every replica, and restart them;\n\
                     3. run `ponte keys reseal` once; when it reports \"remaining\": 0, drop the old key \
                     from PONTE_MASTER_KEYS_RETIRED."
                );
                return Ok(());
            }
            let master = app::rotate_embedded_master_key(&config).map_err(|e| e.to_string())?;
            eprintln!("new master key {} written to the data folder; re-sealing", master.id());
            reseal(&config, &master).await
        }
        Command::Keys(KeysCommand::Reseal) => {
            let master = app::master_key(&config).map_err(|e| e.to_string())?;
            reseal(&config, &master).await
        }
        Command::Openapi => {
            print!("{}", openapi::document_json());
            Ok(())
        }
        Command::Healthcheck => {
            let url = format!("{}/healthz", config.local_url());
            let http = ponte_identity::upstream::http_client().map_err(|e| e.to_string())?;
            let response = http.get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
            match response.status() {
                status if status.is_success() => Ok(()),
                status => Err(format!("{url} answered {status}")),
            }
        }
    }
}

async fn reseal(config: &Config, master: &ponte_identity::seal::MasterKeys) -> Result<(), String> {
    let db = app::open_database(config).map_err(|e| e.to_string())?;
    if config.migrate_on_start {
        app::migrate(&db).await.map_err(|e| e.to_string())?;
    }
    let report =
        ponte_server::reseal::reseal_all(&db, master, ponte_server::reseal::BATCH).await.map_err(|e| e.to_string())?;
    println!("{}", serde_json::to_string(&report).map_err(|e| e.to_string())?);
    Ok(())
}
