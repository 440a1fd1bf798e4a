//! The `tilts` binary: `serve`, `check`, `test`, `schema`, `demo`, `simulate`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// A request allocates many small JSON values; glibc's allocator spent about a fifth of tilts'
// CPU on them in the sync-route benchmark (engine/benches/sync_route.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tilts_engine::logging::{self, LogFormat};
use tilts_engine::{check, demo, server, service, testing};

#[derive(Parser)]
#[command(
    name = "tilts",
    version,
    about = "tilts: integration engine for Latvian municipalities"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "TILTS_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a route file and everything it refers to; report every problem. Exit 1 on problems.
    Check {
        /// The route file.
        #[arg(default_value = "routes.yaml")]
        file: PathBuf,
    },
    /// Serve the routes of a route file (refuses to start on a file that does not check).
    Serve {
        /// The route file.
        #[arg(long, short, default_value = "routes.yaml", env = "TILTS_CONFIG")]
        config: PathBuf,
        /// Listen address, overriding `server.listen` (port 0 picks a free port).
        #[arg(long, env = "TILTS_LISTEN")]
        listen: Option<String>,
        /// Admin API address, overriding `server.admin_listen`.
        #[arg(long, env = "TILTS_ADMIN_LISTEN")]
        admin_listen: Option<String>,
        /// Store URL (`sqlite://file.db` or `postgres://...`), overriding `server.database`.
        #[arg(long, env = "TILTS_DATABASE_URL")]
        database: Option<String>,
        /// Run no delivery workers in this process (ingress only).
        #[arg(long)]
        no_workers: bool,
    },
    /// Print the JSON Schema of the route file (for editors: yaml-language-server).
    Schema,
    /// Run tilts with the shipped routes against built-in simulators and show what happens.
    Demo {
        /// The route file.
        #[arg(long, short, default_value = "routes.yaml")]
        config: PathBuf,
        /// Keep serving after the demo batch, so you can try requests yourself.
        #[arg(long)]
        keep_running: bool,
    },
    /// Run the route tests (`route-tests/*.yaml` beside the route file) against stand-ins of the
    /// systems. Exit 0 when all pass, 1 when any fails, 2 when the routes or tests cannot be read.
    Test {
        /// The route file.
        #[arg(default_value = "routes.yaml")]
        routes: PathBuf,
        /// Run only the tests whose `route › name` contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// The folder of test files (default: `route-tests/` next to the route file).
        #[arg(long)]
        tests: Option<PathBuf>,
    },
    /// Run the simulators of the external systems on fixed ports (for trying routes by hand).
    Simulate {
        /// First port; the simulators take this and the next ones.
        #[arg(long, default_value_t = 9102)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { file } => match check::load(&file) {
            Ok(plan) => {
                println!(
                    "{}: ok ({} routes, {} systems)",
                    file.display(),
                    plan.routes.len(),
                    plan.systems.len()
                );
                ExitCode::SUCCESS
            }
            Err(d) => {
                eprintln!("{d}");
                ExitCode::FAILURE
            }
        },
        Command::Schema => {
            let schema = schemars::schema_for!(tilts_engine::config::types::RouteFile);
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Command::Serve {
            config,
            listen,
            admin_listen,
            database,
            no_workers,
        } => {
            let _log = logging::init(cli.log_format);
            let plan = match check::load(&config) {
                Ok(p) => p,
                Err(d) => {
                    eprintln!("{d}");
                    eprintln!(
                        "tilts serve: not starting, fix the problems above (tilts check {} shows them)",
                        config.display()
                    );
                    return ExitCode::FAILURE;
                }
            };
            let routes = plan.routes.len();
            let opts = service::StartOptions {
                listen,
                admin_listen,
                database,
                workers: None,
                no_workers,
            };
            let running = match service::start(plan, opts).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            tracing::info!(routes, "tilts listening on http://{}", running.addr);
            // Printed on stdout for scripts and tests that start tilts on port 0.
            println!("listening on http://{}", running.addr);
            if let Some(a) = running.admin_addr {
                println!("admin API on http://{a}");
            }
            server::shutdown_signal().await;
            tracing::info!("shutdown requested: finishing in-flight requests and deliveries");
            running.stop().await;
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Command::Demo {
            config,
            keep_running,
        } => {
            let _log = keep_running.then(|| logging::init(cli.log_format));
            match demo::run(&config, keep_running).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("demo failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Test {
            routes,
            filter,
            tests,
        } => {
            // No log subscriber: tilts' own logs stay quiet; the report goes to stdout.
            let opts = testing::Options {
                routes,
                tests,
                filter,
            };
            match testing::run(&opts, &mut std::io::stdout()).await {
                Ok(summary) if summary.failed == 0 => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("{e}");
                    eprintln!("tilts test: no tests ran");
                    ExitCode::from(2)
                }
            }
        }
        Command::Simulate { port } => {
            let _log = logging::init(cli.log_format);
            match demo::simulate(port).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("simulate failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
