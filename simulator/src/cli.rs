//! The command line: `up`, `bench`, `run`, `mutants`, `load`, `reads`,
//! and `gateway`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "simulator",
    version,
    about = "Starts the FicMart payment stack locally and benchmarks it"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the stack (Postgres, the mock bank and the gateway) and run until Ctrl-C.
    Up(UpArgs),
    /// Fire authorizations at a target and report throughput and latency.
    Bench(BenchArgs),
    /// Run a seeded chaos scenario against its own stack (or given URLs) and check the invariants.
    Run(RunArgs),
    /// The mutation table: reintroduce each known bug into the gateway and
    /// say which invariant of the default run catches it, after how many seeds.
    Mutants(MutantsArgs),
    /// Fill a gateway database with a year of payments (set-based SQL, in
    /// chunks): a throwaway durable cluster of its own, kept running, or
    /// --database-url.
    Load(LoadArgs),
    /// Time reads (GET by id, list by customer and by order, first and
    /// deep cursor pages) through a gateway on a loaded database, print
    /// table and index sizes per million payments, and optionally purge
    /// expired idempotency keys under traffic.
    Reads(ReadsArgs),
    /// Run a `gateway` command (`api-key list`, `reconcile`, …) against the
    /// running `simulator up`: DATABASE_URL and BANK_URL are its stack's.
    #[command(
        disable_help_flag = true,
        disable_version_flag = true,
        long_about = "Run a `gateway` command (`api-key list`, `reconcile`, `migrate`, …) \
against the running `simulator up`: DATABASE_URL and BANK_URL are set to its stack's, \
found through the record `up` keeps in its run directory ($TMPDIR/ficmart-up-<pid>/stack.json). \
With several `up`s running, SIMULATOR_UP_DIR names the run directory of one. \
`--database-url` given on the command line is used as given. \
`simulator gateway --help` is the gateway's own help."
    )]
    Gateway(GatewayArgs),
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Payments to load.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub payments: u32,
    /// The gateway's database (migrated here if it is not yet); without
    /// it a durable throwaway cluster is started and kept running.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Merchants the payments are spread over (unevenly: the first,
    /// `ficmart`, gets the most).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub merchants: u32,
    /// Days the payments are spread over, ending now.
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Idempotency keys are kept for the operations of the last this many
    /// days [default: all of --days]; those older than the gateway's
    /// retention (24 h) are what its purge deletes.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=3650))]
    pub key_days: Option<u32>,
    /// Payments written per statement (and per transaction).
    #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk: u32,
    /// The seed of the mix (statuses, merchants, customers, times); ids
    /// are random.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Add to a database that holds payments already (refused without it).
    #[arg(long)]
    pub append: bool,
}

#[derive(Debug, Args)]
pub struct ReadsArgs {
    /// The loaded gateway database.
    #[arg(long)]
    pub database_url: String,
    /// A running gateway on that database; without it one is started
    /// (its bank is not needed for reads).
    #[arg(long, requires = "api_key")]
    pub url: Option<String>,
    /// An API key of --merchant that the given gateway accepts (with --url);
    /// without --url a key is created.
    #[arg(long, env = "SIMULATOR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The merchant whose payments are read.
    #[arg(long, default_value = "ficmart")]
    pub merchant: String,
    /// Timed requests of each kind.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..))]
    pub samples: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// The deep page: the page of this number reached by following cursors.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(2..))]
    pub deep_page: u32,
    /// Then purge the expired idempotency keys (the gateway's own purge,
    /// batch by batch) while the reads go on, and report its rate and the
    /// table's dead rows and size before and after.
    #[arg(long)]
    pub purge: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MutantsArgs {
    /// Seeds of the default run to try, in order, until one fails.
    #[arg(long, value_delimiter = ',', default_values_t = [7_u64, 8, 9])]
    pub seeds: Vec<u64>,
    /// Payments in each run.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub payments: u32,
    /// Gateway replicas in each run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replicas: u32,
    /// Only these mutants (comma-separated names; `--list` shows them).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Skip the run of the unmodified gateway on the same seeds.
    #[arg(long)]
    pub no_baseline: bool,
    /// List the mutants and exit.
    #[arg(long)]
    pub list: bool,
    /// Also write the table as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// The `simulator` binary to run the gateways with (tests); this one by default.
    #[arg(long, hide = true)]
    pub program: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Port of the mock bank; 0 picks a free port.
    #[arg(long, default_value_t = 8787)]
    pub bank_port: u16,
    /// Port of the gateway; 0 picks a free port.
    #[arg(long, default_value_t = 8080)]
    pub gateway_port: u16,
    /// Port of the gateway's operator listener (`/metrics`, `/ready`); 0
    /// picks a free port.
    #[arg(long, default_value_t = 8081)]
    pub operator_port: u16,
    /// Start the bank with no chaos (no injected failures, no added latency)
    /// instead of the contract's defaults (5% failures, 100–2000 ms latency).
    #[arg(long)]
    pub calm: bool,
    /// Print the bank's and the gateway's JSON logs (RUST_LOG filters them;
    /// default info). Without it the gateway's go to a log file.
    #[arg(long, short)]
    pub verbose: bool,
    /// Keep the run directory (the gateway's log) after a clean stop; it is
    /// always kept when a service failed.
    #[arg(long)]
    pub keep_logs: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The mock bank's `POST /api/v1/authorizations`.
    Bank,
    /// The payment gateway's `POST /v1/payments`.
    Gateway,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to benchmark.
    #[arg(long, value_enum)]
    pub target: Target,
    /// Base URL of a running target (e.g. http://127.0.0.1:8787 for the
    /// bank, http://127.0.0.1:8080 for the gateway); without it the
    /// simulator starts its own stack on free ports.
    #[arg(long)]
    pub url: Option<String>,
    /// The gateway's API key (with `--target gateway --url`).
    #[arg(long, env = "SIMULATOR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The bank behind a running gateway (with `--target gateway --url`),
    /// where the test cards are opened and the ledger is checked.
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    pub bank_url: String,
    /// Fresh test cards to spread the load over (round-robin).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub cards: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Authorizations to send in total (with `--mix`: flows, each a
    /// payment's whole life).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub requests: u32,
    /// Latency the bank adds to every API request, in milliseconds
    /// [default: 0 for the bank, 1000 for the gateway].
    #[arg(long, alias = "latency-ms")]
    pub bank_latency_ms: Option<u64>,
    /// Spread the clients' first requests evenly over this many
    /// milliseconds [default: the bank's latency]: independent shoppers
    /// rather than all of them at the same instant. With a fixed bank
    /// latency, clients that start together stay together, and the gateway
    /// sees the whole concurrency arrive in one wave each round trip.
    #[arg(long)]
    pub ramp_ms: Option<u64>,
    /// Postgres connections of the gateway the bench starts (its
    /// `--db-pool-size`); ignored with `--url`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub pool_size: u32,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print the in-process bank's and the gateway's JSON logs.
    #[arg(long, short)]
    pub verbose: bool,
    /// With `--target gateway` and no `--url`: register a webhook endpoint
    /// for the merchant first, at a receiver in this process that answers
    /// 200 at once (`calm`) or has chaos of its own (`chaotic`: 500s,
    /// hang-ups, answers too late), to measure what webhooks cost a payment.
    #[arg(long, value_enum)]
    pub webhook: Option<WebhookReceiver>,
    /// With `--target gateway`: each client runs whole checkout flows
    /// instead of authorizations alone (authorize, read, capture or void,
    /// a share refunded, lists by order and by customer), and the report
    /// gives rates and latencies per operation.
    #[arg(long)]
    pub mix: bool,
    /// The seed of `--mix`'s plan (which flows capture, void, refund,
    /// list) [default: a random one, printed in the report].
    #[arg(long, requires = "mix")]
    pub seed: Option<u64>,
    /// With the bench's own stack: after the load, run pgbench's
    /// single-row INSERTs on the same cluster for this many seconds and
    /// report the gateway's CPU in inserts' worth; 0 skips it.
    #[arg(long, default_value_t = 10)]
    pub floor_seconds: u64,
}

/// The receiver of `simulator bench --webhook`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WebhookReceiver {
    Calm,
    Chaotic,
}

impl BenchArgs {
    /// The bank's added latency: as given, or the target's default.
    pub fn bank_latency_ms(&self) -> u64 {
        self.bank_latency_ms.unwrap_or(match self.target {
            Target::Bank => 0,
            Target::Gateway => 1000,
        })
    }

    /// Over how long the clients' first requests are spread.
    pub fn ramp(&self) -> Duration {
        Duration::from_millis(self.ramp_ms.unwrap_or_else(|| self.bank_latency_ms()))
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The scenario's seed: the same seed gives the same scenario and fault
    /// plan [default: a random one, printed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Payments (orders) in the scenario.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub payments: u32,
    /// Payments carried out at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Stop starting new payments after this long (e.g. 90s, 5m).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Gateway processes on one database; requests go round-robin.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replicas: u32,
    /// Run against this running gateway instead of starting a stack
    /// (repeat it for several; requests go round-robin). Needs
    /// --api-key, --bank-url, --gateway-database-url and
    /// --bank-database-url; nothing is started or killed, so --replicas,
    /// --kill-every and the crashy and everything profiles are refused.
    #[arg(long, value_name = "URL", requires = "api_key", requires = "bank_url",
        requires = "gateway_database_url", requires = "bank_database_url",
        conflicts_with_all = ["replicas", "kill_every"])]
    pub gateway_url: Vec<String>,
    /// An API key the given gateways accept (with --gateway-url).
    #[arg(long, requires = "gateway_url")]
    pub api_key: Option<String>,
    /// The bank behind the given gateways, whose /admin/chaos takes the
    /// chaos profile (its settings are restored at the end) and where the
    /// fresh cards are opened (with --gateway-url).
    #[arg(long, value_name = "URL", requires = "gateway_url")]
    pub bank_url: Option<String>,
    /// The given gateways' database, read by the checks (with --gateway-url).
    #[arg(long, value_name = "URL", requires = "gateway_url")]
    pub gateway_database_url: Option<String>,
    /// The bank's database, read by the checks (with --gateway-url).
    #[arg(long, value_name = "URL", requires = "gateway_url")]
    pub bank_database_url: Option<String>,
    /// calm, reference, lossy, outage, crashy, everything, or a JSON object
    /// of the bank's /admin/chaos fields. `everything` (the default) also
    /// restarts the gateways' database, terminates its connections, sends
    /// SIGTERM, expires authorizations, arms fault points and skews clocks.
    #[arg(long, default_value = "everything")]
    pub chaos: String,
    /// Kill a gateway replica with SIGKILL this often (e.g. 5s), and restart it.
    #[arg(long, value_parser = parse_duration)]
    pub kill_every: Option<Duration>,
    /// Fresh test cards the payments are spread over.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    pub cards: u16,
    /// Run the scenario in FILE (JSON, as a failing run writes its shrunk
    /// scenario) instead of generating one: it holds the seed, the chaos,
    /// the cards, the payments and the faults.
    #[arg(long, value_name = "FILE",
        conflicts_with_all = ["seed", "payments", "cards", "chaos", "kill_every"])]
    pub scenario: Option<PathBuf>,
    /// Also write the report as JSON to FILE and as HTML to FILE.html (and
    /// on a violation the shrunk scenario to FILE.shrunk.json).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Run the gateways with a known bug reintroduced (one of the mutation
    /// table's: `simulator mutants --list`), to see the checks catch it.
    #[arg(long, value_name = "NAME")]
    pub mutant: Option<String>,
    /// Run the gateways' background reconciliation this often (e.g. 1s),
    /// sweeping every pass, so that its repairs race recovery and the
    /// clients under the same faults and kills. Off by default: a repair
    /// would hide a receipt behind the bank that the checks must see.
    #[arg(long, value_parser = parse_duration, conflicts_with = "gateway_url")]
    pub reconcile_every: Option<Duration>,
    /// Have the bank's console act behind the gateway this many times in
    /// the run, spread over its payments: each time it captures or voids
    /// a share of the latest authorized payments and refunds a share of
    /// the captured ones, while the clients act on the same payments. Only
    /// with --reconcile-every, whose repairs must bring every receipt to
    /// what the bank did.
    #[arg(long, default_value_t = 0, requires = "reconcile_every",
        conflicts_with = "scenario", value_parser = clap::value_parser!(u32).range(0..=10))]
    pub console_waves: u32,
    /// On a violation, do not shrink the scenario (shrinking re-runs smaller
    /// scenarios, each on a fresh stack, a few times at most).
    #[arg(long)]
    pub no_shrink: bool,
    /// Print the gateways' JSON logs here instead of log files.
    #[arg(long, short)]
    pub verbose: bool,
    /// No progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// `500ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let invalid = || format!("{raw:?} is not a duration like 500ms, 5s, 2m or 1h");
    let split = raw
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let ms = match unit {
        "ms" => number,
        "s" => number * 1000,
        "m" => number * 60_000,
        "h" => number * 3_600_000,
        _ => return Err(invalid()),
    };
    Ok(Duration::from_millis(ms))
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Everything after `gateway`, passed on untouched.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<OsString>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_gateway_subcommand_passes_everything_on() {
        let cli = Cli::try_parse_from(["simulator", "gateway", "serve", "--port", "9", "--help"])
            .unwrap();
        match cli.command {
            Command::Gateway(args) => assert_eq!(args.args, ["serve", "--port", "9", "--help"]),
            Command::Up(_)
            | Command::Bench(_)
            | Command::Run(_)
            | Command::Mutants(_)
            | Command::Load(_)
            | Command::Reads(_) => {
                panic!("not the gateway: {:?}", cli.command)
            }
        }
    }

    #[test]
    fn the_gateway_subcommand_is_offered_for_the_running_stack() {
        let help = Cli::command().render_help().to_string();
        assert!(
            help.lines()
                .any(|line| line.trim_start().starts_with("gateway")
                    && line.contains("`simulator up`")),
            "{help}"
        );
    }

    fn bench_args(args: &[&str]) -> BenchArgs {
        let cli = Cli::try_parse_from(["simulator", "bench"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Bench(args) => args,
            Command::Up(_)
            | Command::Gateway(_)
            | Command::Run(_)
            | Command::Mutants(_)
            | Command::Load(_)
            | Command::Reads(_) => {
                panic!("not bench")
            }
        }
    }

    #[test]
    fn bank_latency_defaults_by_target() {
        assert_eq!(bench_args(&["--target", "bank"]).bank_latency_ms(), 0);
        assert_eq!(bench_args(&["--target", "gateway"]).bank_latency_ms(), 1000);
    }

    #[test]
    fn clients_start_spread_over_one_bank_latency_unless_told() {
        let ramp = |args: &[&str]| bench_args(args).ramp();
        assert_eq!(ramp(&["--target", "gateway"]), Duration::from_secs(1));
        assert_eq!(ramp(&["--target", "bank"]), Duration::ZERO);
        let told = [
            "--target",
            "gateway",
            "--bank-latency-ms",
            "500",
            "--ramp-ms",
            "0",
        ];
        assert_eq!(ramp(&told), Duration::ZERO);
        assert_eq!(
            ramp(&["--target", "bank", "--bank-latency-ms", "250"]),
            Duration::from_millis(250)
        );
    }

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["simulator", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run(args) => Ok(args),
            Command::Up(_)
            | Command::Bench(_)
            | Command::Gateway(_)
            | Command::Mutants(_)
            | Command::Load(_)
            | Command::Reads(_) => {
                panic!("not run")
            }
        }
    }

    #[test]
    fn run_takes_a_scenario_file_instead_of_a_seed() {
        let args = run_args(&["--scenario", "s.json", "--replicas", "2", "--no-shrink"]).unwrap();
        assert_eq!(args.scenario, Some(PathBuf::from("s.json")));
        assert_eq!((args.replicas, args.no_shrink), (2, true));
        // The defaults of what the file holds do not conflict with it ...
        assert_eq!(
            (args.payments, args.cards, args.chaos.as_str()),
            (200, 20, "everything")
        );
        // ... but saying them does.
        for also in [
            ["--seed", "1"],
            ["--payments", "3"],
            ["--cards", "3"],
            ["--chaos", "calm"],
            ["--kill-every", "5s"],
        ] {
            let mut args = vec!["--scenario", "s.json"];
            args.extend(also);
            assert!(run_args(&args).is_err(), "{args:?}");
        }
        let args = run_args(&[]).unwrap();
        assert_eq!((args.scenario, args.no_shrink), (None, false));
    }

    #[test]
    fn the_given_url_flags_go_together_and_refuse_kills_and_replicas() {
        let given = [
            "--gateway-url",
            "http://127.0.0.1:1",
            "--gateway-url",
            "http://127.0.0.1:2",
            "--api-key",
            "k",
            "--bank-url",
            "http://127.0.0.1:3",
            "--gateway-database-url",
            "postgres://g",
            "--bank-database-url",
            "postgres://b",
        ];
        let args = run_args(&given).unwrap();
        assert_eq!(
            args.gateway_url,
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        assert_eq!(args.api_key.as_deref(), Some("k"));
        assert_eq!(args.bank_database_url.as_deref(), Some("postgres://b"));
        // Each pair of flag and value left out is refused.
        for left_out in (0..given.len()).step_by(2).skip(1) {
            let mut partial = given.to_vec();
            partial.drain(left_out..left_out + 2);
            if left_out == 2 {
                // The second --gateway-url: one is enough.
                assert!(run_args(&partial).is_ok());
                continue;
            }
            let error = run_args(&partial).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::MissingRequiredArgument,
                "{partial:?}"
            );
        }
        for alone in given.chunks(2).skip(1) {
            assert!(run_args(alone).is_err(), "{alone:?}");
        }
        for refused in [
            ["--kill-every", "5s"],
            ["--replicas", "2"],
            ["--reconcile-every", "1s"],
        ] {
            let mut args = given.to_vec();
            args.extend(refused);
            let error = run_args(&args).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{args:?}"
            );
        }
        assert!(run_args(&[]).unwrap().gateway_url.is_empty());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5 s").is_err());
    }
}
