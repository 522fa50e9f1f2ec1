//! `upload queue add|list|rm|pause|resume` and `upload status`: the persistent queue that
//! `upload run` works through, and what it expects to finish when.

use super::{Failure, Global, exit, ordinal};
use crate::estimate::{self, LinkRate};
use crate::queue::{self, Activity, Clock, Outlook};
use crate::schedule::{self, Budget, Timetable, json_time};
use crate::send::check_url;
use crate::send::{self, QueueRequest, SendError};
use crate::store::{Origin, Store, Transfer, TransferState};
use crate::units::{Rate, Size, format_byte_rate, format_size};
use anyhow::{Context, anyhow};
use chrono::{DateTime, Local, Utc};
use serde_json::json;
use std::path::PathBuf;

pub const AFTER_HELP: &str = "\
Examples:
  upload queue add debian.iso http://server:8080/files/ --priority 2 --deadline \"2026-01-03 07:00\"
  upload queue add notes.tar http://server:8080/files/ --limit 32kbit
  upload queue add debian.iso ssh://alice@server/srv/inbox/     (upload run --ssh-command for another ssh)
  upload queue add backup.tar http://server:8080/files/ --polite
  upload queue list
  upload queue pause 3
  upload run --timetable \"07:00,32kbit 23:00,off\"

Order: higher --priority first; among equals the earliest deadline, then the oldest.
Concurrent transfers (upload run --jobs N) share the budget by weight: each priority step
doubles a transfer's share; its own --limit caps it further. --polite transfers together get only
what polite mode allows them: the link's spare capacity, measured from their queueing delay,
so they yield within seconds to other traffic and to the run's other transfers, which use the
budget as before (a `polite` timetable slot makes every transfer polite).";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// Queue a file for `upload run`.
    Add(AddArgs),
    /// The queue, in the order it will be sent.
    List {
        /// One JSON array (as `upload status --json`).
        #[arg(long)]
        json: bool,
    },
    /// Remove a transfer from the queue (a running one stops; the server's partial upload
    /// expires there).
    Rm {
        /// The transfer's number, as `upload queue list` shows it (#3 is 3).
        id: i64,
    },
    /// Hold a transfer: `upload run` stops it between chunks and skips it until resumed.
    Pause {
        /// The transfer's number, as `upload queue list` shows it (#3 is 3).
        id: i64,
    },
    /// Put a paused or failed transfer back in the queue; an `upload send`'s is handed to
    /// `upload run`.
    Resume {
        /// The transfer's number, as `upload queue list` shows it (#3 is 3).
        id: i64,
    },
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The file to upload.
    pub file: PathBuf,
    /// Where to: a tus creation URL, e.g. http://server:8080/files/, a directory over ssh,
    /// e.g. ssh://user@server/srv/inbox/, or an S3 object, s3://BUCKET/KEY
    pub url: String,
    /// For s3:// URLs: the S3-compatible store, e.g. http://127.0.0.1:9000 [default:
    /// AWS_ENDPOINT_URL, else AWS]; kept with the transfer for `upload run`.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Higher goes first, and gets a larger share when transfers run together.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i64,
    /// When it must be on the server, local time, e.g. "Fri 07:00" (the next Friday) or
    /// "2026-01-03 07:00"; flagged if the timetable cannot make it.
    #[arg(long, value_name = "TIME")]
    pub deadline: Option<String>,
    /// This transfer's own cap, within the shared budget, e.g. 32kbit.
    #[arg(long, value_name = "RATE")]
    pub limit: Option<Rate>,
    /// The name to publish under [default: the file's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Send it politely: inside `upload run` it uses only what the link has spare, steered by
    /// the queueing delay it measures, and yields within seconds to other traffic and to the
    /// run's other transfers; never above its --limit or the run's budget.
    #[arg(long)]
    pub polite: bool,
    /// Bytes per request [default: about 20 s at the expected rate].
    #[arg(long, value_name = "SIZE")]
    pub chunk: Option<Size>,
    #[command(flatten)]
    pub base: super::send::BaseArgs,
    /// Print the queued transfer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// One transfer [default: all].
    pub id: Option<i64>,
    /// One JSON array of objects.
    #[arg(long)]
    pub json: bool,
}

fn open(global: &Global) -> Result<Store, Failure> {
    let path = global.db_path()?;
    Store::open(&path)
        .context("opening the state database")
        .map_err(Failure::from)
}

/// The timetable status and add plan with: the running daemon's, else the configured one,
/// else none (always on).
pub fn effective_timetable(store: &Store, global: &Global) -> Result<Timetable, Failure> {
    let text = match store
        .get_setting(queue::TIMETABLE)
        .context("reading settings")?
    {
        Some(t) => Some(t),
        None => {
            global
                .settings(crate::config::Flags::default())?
                .timetable
                .value
        }
    };
    match text {
        None => Ok(Timetable::constant(Budget::Unlimited)),
        Some(t) => t.parse().map_err(Failure::usage),
    }
}

/// The link's rate for planning: the median of recent transfers, else the estimate default.
fn link_rate(store: &Store) -> Result<LinkRate, Failure> {
    let samples = store
        .recent_unthrottled_link_samples(None, estimate::HISTORY_SAMPLES)
        .context("reading link history")?;
    let pairs: Vec<(u64, f64)> = samples.iter().map(|s| (s.bytes, s.seconds)).collect();
    Ok(match estimate::median_goodput(&pairs) {
        Some(rate) => LinkRate {
            rate,
            measured: true,
        },
        None => LinkRate {
            rate: Rate::from_bits_per_second(estimate::DEFAULT_RATE_BPS).expect("positive default"),
            measured: false,
        },
    })
}

fn clock() -> Result<Clock, Failure> {
    Clock::from_env().map_err(|e| Failure::usage(anyhow!(e)))
}

/// "Thu 03:10, third night" — in words, following the timetable.
pub fn finish_words(
    at: &DateTime<chrono::FixedOffset>,
    windows: Option<u32>,
    now: &DateTime<Local>,
) -> String {
    let at = at.with_timezone(&Local);
    let when = if at.date_naive() == now.date_naive() {
        at.format("today %H:%M").to_string()
    } else if (at.date_naive() - now.date_naive()).num_days() < 7 {
        at.format("%a %H:%M").to_string()
    } else {
        at.format("%a %Y-%m-%d %H:%M").to_string()
    };
    match windows {
        Some(n) if n > 1 => format!("{when}, {} night", ordinal(n)),
        _ => when,
    }
}

/// The `upload limit` override saved in the database, if any.
fn budget_override(store: &Store) -> Result<Option<Budget>, Failure> {
    Ok(queue::budget_override(store).context("reading settings")?)
}

/// The run's budget now: `upload limit`'s override, else the timetable's.
fn budget_now(store: &Store, global: &Global, now: &DateTime<Local>) -> Result<Budget, Failure> {
    let tt = effective_timetable(store, global)?;
    Ok(queue::budget_in_force(&tt, budget_override(store)?, now))
}

/// What a running `upload run`'s polite mode is doing, as it last published it: in a `polite`
/// slot, or for its polite transfers.
fn polite_line(store: &Store) -> Result<Option<String>, Failure> {
    if queue::active_run(store)
        .context("reading settings")?
        .is_none()
    {
        return Ok(None);
    }
    let state = store
        .get_setting(queue::POLITE_STATE)
        .context("reading settings")?
        .and_then(|v| serde_json::from_str::<queue::PoliteState>(&v).ok());
    Ok(state.map(|s| {
        let what = match s.state.as_str() {
            "yielding" => "yielding to other traffic",
            "slowdown" => "measuring the base delay",
            "probing" => "probing the link",
            _ => "using the idle link",
        };
        // Outside a `polite` slot it steers the polite transfers' part only.
        let whose = if s.transfers_only {
            "polite transfers"
        } else {
            "polite"
        };
        let mut line = format!(
            "{whose}: {what} at {} (queueing delay {:.0} ms",
            format_byte_rate(s.rate_bps / 8.0),
            s.queue_delay_ms
        );
        if let Some(c) = s.capacity_bps {
            line += &format!(", link {}", format_byte_rate(c / 8.0));
        }
        line + ")"
    }))
}

/// The timetable finish times follow: an `upload limit` override holds until cleared, so it
/// stands for the whole timetable.
fn planning_timetable(store: &Store, global: &Global) -> Result<Timetable, Failure> {
    Ok(match budget_override(store)? {
        Some(b) => Timetable::constant(b),
        None => effective_timetable(store, global)?,
    })
}

/// The timetable as `upload limit` names it.
fn timetable_words(tt: &Timetable) -> String {
    if *tt == Timetable::constant(Budget::Unlimited) {
        "no timetable (full speed at all hours)".into()
    } else {
        format!("the timetable {tt}")
    }
}

/// One line on an override in force, for `status` and `upload limit`.
fn override_line(b: Budget) -> String {
    format!(
        "budget {b} set by `upload limit`, in force instead of the timetable until \
         `upload limit --clear`"
    )
}

fn transfer_json(
    t: &Transfer,
    o: Option<&Outlook>,
    now: &DateTime<Local>,
    activity: Activity,
) -> serde_json::Value {
    let eta = o
        .and_then(|o| o.finish_at)
        .map(|f| (f - now.fixed_offset()).num_seconds().max(0));
    json!({
        "id": t.id,
        "name": t.name,
        "file": t.source_path,
        "url": t.dest_url,
        "upload_url": t.upload_url,
        "state": activity,
        "origin": t.origin,
        "offset": t.offset,
        "size": t.size,
        "bytes_to_send": t.bytes_to_send(),
        "delta_base": t.delta_base,
        "priority": t.priority,
        "deadline": t.deadline.as_ref().map(json_time),
        "limit_bps": t.rate_limit_bps,
        "polite": t.polite,
        "rate_bps": if activity == Activity::Running { t.rate_bps } else { None },
        "eta_seconds": eta,
        "finish_at": o.and_then(|o| o.finish_at).as_ref().map(json_time),
        "earliest_finish": o.and_then(|o| o.earliest_finish).as_ref().map(json_time),
        "deadline_missed": o.is_some_and(|o| o.late),
        "finished_at": t.finished_at.as_ref().map(json_time),
        "last_error": t.last_error,
        "bytes_sent": t.bytes_sent,
        "resent_bytes": t.resent_bytes,
    })
}

fn plan(store: &Store, global: &Global, rows: &[Transfer]) -> Result<Vec<Outlook>, Failure> {
    let tt = planning_timetable(store, global)?;
    let link = link_rate(store)?;
    Ok(queue::outlook(rows, &tt, link, clock()?.now()))
}

pub fn run(global: &Global, args: Args) -> Result<(), Failure> {
    let store = open(global)?;
    match args.command {
        QueueCommand::Add(a) => add(global, &store, a),
        QueueCommand::List { json } => list(global, &store, None, json),
        QueueCommand::Rm { id } => {
            let t = get(&store, id)?;
            // The multipart upload first: once the row is gone nothing remembers its id.
            abort_upload(&t)?;
            store.delete_transfer(id).context("removing")?;
            send::remove_recipe(store.path(), id);
            println!("removed #{id} {}", t.name);
            Ok(())
        }
        QueueCommand::Pause { id } => {
            let t = get(&store, id)?;
            if t.state == TransferState::Done {
                return Err(Failure::usage(anyhow!("#{id} is already done")));
            }
            store
                .set_state(id, TransferState::Paused, None)
                .context("pausing")?;
            println!("paused #{id} {} at {}", t.name, format_size(t.offset));
            Ok(())
        }
        QueueCommand::Resume { id } => {
            let t = get(&store, id)?;
            if t.origin == Origin::Send {
                // An `upload send`'s transfer becomes the run's work only when asked here.
                let live = queue::activity(&t, Budget::Unlimited) == Activity::Running;
                if t.state == TransferState::Done || live {
                    return Err(Failure::usage(anyhow!(
                        "#{id} is {}; only a stopped transfer can be handed to `upload run`",
                        if live {
                            "being sent by `upload send`"
                        } else {
                            "done"
                        }
                    )));
                }
                store.hand_to_queue(id).context("resuming")?;
                println!(
                    "queued #{id} {}: `upload run` sends it from {} on",
                    t.name,
                    format_size(t.offset)
                );
                return Ok(());
            }
            if !matches!(t.state, TransferState::Paused | TransferState::Failed) {
                return Err(Failure::usage(anyhow!(
                    "#{id} is {}, not paused or failed",
                    t.state
                )));
            }
            store
                .set_state(id, TransferState::Queued, None)
                .context("resuming")?;
            println!("queued #{id} {} again", t.name);
            Ok(())
        }
    }
}

fn get(store: &Store, id: i64) -> Result<Transfer, Failure> {
    store.transfer(id).map_err(|e| match e {
        crate::store::StoreError::NotFound(_) => Failure::usage(anyhow!(
            "no transfer #{id}; `upload queue list` shows the ids"
        )),
        other => Failure::from(other),
    })
}

fn add(global: &Global, store: &Store, a: AddArgs) -> Result<(), Failure> {
    super::send::check_chunk(a.chunk)?;
    let mut a = a;
    a.url = super::send::destination_url(&a.url, a.endpoint.as_deref())?;
    if a.url.starts_with("s3://") {
        crate::s3::S3Url::parse(&a.url).map_err(|e| Failure::usage(anyhow!(e)))?;
    } else {
        check_url(&a.url).map_err(Failure::usage)?;
    }
    let now = clock()?.now();
    let deadline = match &a.deadline {
        None => None,
        Some(d) => {
            let mut at = schedule::parse_local_time(d, &Local, now).map_err(Failure::usage)?;
            // A bare time already past today means tomorrow's, as for `upload run --until`.
            if at <= now && schedule::parse_clock(d).is_some() {
                at += chrono::Duration::days(1);
            }
            if at <= now {
                return Err(Failure::usage(anyhow!(
                    "the deadline {} is already past (it is {} now): give a time to come, \
                     e.g. --deadline \"Fri 07:00\" or --deadline \"{}\"",
                    at.format("%a %Y-%m-%d %H:%M"),
                    now.format("%a %Y-%m-%d %H:%M"),
                    (now + chrono::Duration::days(2)).format("%Y-%m-%d 07:00")
                )));
            }
            Some(at.with_timezone(&Utc))
        }
    };
    let new = send::queued_transfer(QueueRequest {
        file: a.file,
        url: a.url,
        name: a.name,
        chunk: a.chunk.map(Size::bytes),
        limit: a.limit,
        priority: a.priority,
        deadline,
        link: link_rate(store)?.rate,
        base: a.base.choice(),
    })
    .map_err(|e| {
        let code = match e {
            SendError::NotAFile { .. } => exit::NOT_A_FILE,
            _ => exit::SOURCE,
        };
        Failure::new(code, anyhow!(e))
    })?;
    let t = store
        .insert_transfer_as(&new, a.polite)
        .context("queueing")?;
    let rows = store.list_transfers().context("reading the queue")?;
    let outlook = plan(store, global, &rows)?;
    let o = outlook.iter().find(|o| o.id == t.id);
    if a.json {
        println!(
            "{}",
            transfer_json(&t, o, &now, queue::activity(&t, Budget::Unlimited))
        );
        return Ok(());
    }
    let finish = o
        .and_then(|o| o.finish_at.map(|f| finish_words(&f, o.windows, &now)))
        .unwrap_or_else(|| "not while the timetable pauses everything".into());
    println!(
        "queued #{} {} ({}) -> {}{}; finishes {finish}",
        t.id,
        t.name,
        format_size(t.size),
        t.dest_url,
        if t.polite { ", polite" } else { "" }
    );
    if let Some(o) = o.filter(|o| o.late) {
        let earliest = o
            .earliest_finish
            .map(|e| finish_words(&e, None, &now))
            .unwrap_or_else(|| "never".into());
        eprintln!(
            "warning: #{} cannot meet its deadline {}: in queue order it finishes {}; \
             the earliest it could (alone, first) is {earliest}. Raise its --priority or \
             widen the timetable",
            t.id,
            t.deadline
                .map(|d| d
                    .with_timezone(&Local)
                    .format("%a %Y-%m-%d %H:%M")
                    .to_string())
                .unwrap_or_default(),
            o.finish_at
                .map(|f| finish_words(&f, o.windows, &now))
                .unwrap_or_else(|| "never".into()),
        );
    }
    Ok(())
}

/// `queue list` and `status`: the queue in order with its outlook.
fn list(global: &Global, store: &Store, id: Option<i64>, json: bool) -> Result<(), Failure> {
    let rows = store.list_transfers().context("reading the queue")?;
    if let Some(id) = id {
        get(store, id)?;
    }
    let outlook = plan(store, global, &rows)?;
    let now = clock()?.now();
    let budget = budget_now(store, global, &now)?;
    let shown: Vec<(&Transfer, Option<&Outlook>, Activity)> = rows
        .iter()
        .filter(|t| id.is_none_or(|i| i == t.id))
        .map(|t| {
            (
                t,
                outlook.iter().find(|o| o.id == t.id),
                queue::activity(t, budget),
            )
        })
        .collect();
    if json {
        let arr: Vec<serde_json::Value> = shown
            .iter()
            .map(|(t, o, a)| transfer_json(t, *o, &now, *a))
            .collect();
        println!("{}", serde_json::Value::Array(arr));
        return Ok(());
    }
    if let Some(b) = budget_override(store)? {
        println!("{}", override_line(b));
    }
    if let Some(line) = polite_line(store)? {
        println!("{line}");
    }
    if shown.is_empty() {
        println!("the queue is empty; add with `upload queue add FILE URL`");
        return Ok(());
    }
    for (t, o, activity) in shown {
        // A delta's offset is into its recipe: the bytes that cross the link.
        let to_send = t.bytes_to_send();
        let pct = if to_send == 0 {
            100.0
        } else {
            t.offset as f64 * 100.0 / to_send as f64
        };
        let mut line = format!(
            "#{:<4} {:<8} p{:<3} {:<24} {:>5.1} % of {:>10}",
            t.id,
            activity.as_str(),
            t.priority,
            t.name,
            pct,
            format_size(to_send)
        );
        if let Some(base) = &t.delta_base {
            line += &format!(" (delta against {base}, for {})", format_size(t.size));
        }
        if t.polite {
            line += "  polite";
        }
        if activity == Activity::Running
            && let Some(r) = t.rate_bps
        {
            line += &format!("  {}", format_byte_rate(r / 8.0));
        }
        match (t.state, o) {
            (TransferState::Done, _) => {
                if let Some(f) = t.finished_at {
                    line += &format!(
                        "  done {}",
                        f.with_timezone(&Local).format("%a %Y-%m-%d %H:%M")
                    );
                }
            }
            (_, Some(o)) if o.finish_at.is_some() => {
                let f = o.finish_at.expect("checked");
                line += &format!("  finishes {}", finish_words(&f, o.windows, &now));
                if o.late {
                    line += "  LATE for its deadline";
                }
            }
            _ => {}
        }
        println!("{line}");
        if let Some(why) = hint(t, activity) {
            println!("       {why}");
        }
        if let Some(e) = &t.last_error
            && t.state != TransferState::Done
        {
            println!("       last error: {e}");
        }
    }
    Ok(())
}

/// What a row's state means for the user, where the word alone does not say it.
fn hint(t: &Transfer, activity: Activity) -> Option<String> {
    let stopped = !matches!(activity, Activity::Running | Activity::Done);
    match (t.origin, activity) {
        (Origin::Send, _) if stopped => Some(format!(
            "from `upload send`{}: rerun `upload send` to continue, or `upload queue resume {}` \
             to let `upload run` send it",
            if activity == Activity::Interrupted {
                ", whose process is gone"
            } else {
                ""
            },
            t.id
        )),
        (Origin::Queue, Activity::Paused) if t.state == TransferState::Running => Some(
            "held between chunks by the run's budget `pause` (its timetable, or `upload limit \
             pause`); it goes on when the budget opens"
                .into(),
        ),
        (Origin::Queue, Activity::Interrupted) => Some(format!(
            "its process ({}) is gone; the next `upload run` continues it",
            t.lock_owner.as_deref().unwrap_or("unknown")
        )),
        _ => None,
    }
}

pub fn status(global: &Global, args: StatusArgs) -> Result<(), Failure> {
    let store = open(global)?;
    list(global, &store, args.id, args.json)?;
    if !args.json && args.id.is_none() {
        abandoned(&store)?;
    }
    Ok(())
}

/// Aborts a transfer's S3 multipart upload, saying so; a transfer to S3 whose upload cannot be
/// aborted stays in the queue (removing it would forget the upload id, and S3 would keep the
/// parts), with what to do.
fn abort_upload(t: &Transfer) -> Result<(), Failure> {
    if !t.dest_url.starts_with("s3://") {
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let aborted = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(30), send::abort_upload(t)).await
    });
    match aborted {
        Ok(Ok(true)) => {
            println!("aborted the multipart upload of #{} {}", t.id, t.name);
            Ok(())
        }
        Ok(Ok(false)) => Ok(()),
        Ok(Err(e)) => Err(Failure::new(
            exit::NETWORK,
            anyhow!(
                "#{} is kept: its multipart upload could not be aborted ({e}); try again when \
                 the bucket can be reached",
                t.id
            ),
        )),
        Err(_) => Err(Failure::new(
            exit::NETWORK,
            anyhow!(
                "#{} is kept: the bucket did not answer the abort of its multipart upload \
                 within 30 s; try again when it can be reached",
                t.id
            ),
        )),
    }
}

/// The S3 multipart uploads no transfer is sending, with the command that aborts each.
fn abandoned(store: &Store) -> Result<(), Failure> {
    let rows = store.list_transfers().context("reading the queue")?;
    if !rows.iter().any(|t| t.dest_url.starts_with("s3://")) {
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (found, failed) = runtime.block_on(send::abandoned_uploads(&rows));
    for a in &found {
        println!(
            "abandoned multipart upload s3://{}/{} (since {}): its parts are kept and billed \
             until aborted: aws s3api abort-multipart-upload --bucket {} --key '{}' \
             --upload-id {}",
            a.bucket, a.key, a.initiated, a.bucket, a.key, a.upload_id
        );
    }
    for f in &failed {
        println!("could not list abandoned multipart uploads in {f}");
    }
    Ok(())
}

/// `upload limit`: changes a running daemon's budget through the database.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  upload limit             # what is in force\n  upload limit 64kbit\n  \
                  upload limit off\n  upload limit pause\n  upload limit --clear\n\n\
                  The budget is saved in the state database: it holds the running `upload run`, \
                  and every later one, instead of the timetable until `upload limit --clear`."
)]
pub struct LimitArgs {
    /// The new budget: a rate (64kbit, 8KiB/s), off (no limit) or pause [default: print the
    /// budget in force].
    pub budget: Option<Budget>,
    /// Go back to the timetable.
    #[arg(long, conflicts_with = "budget")]
    pub clear: bool,
}

pub fn limit(global: &Global, args: LimitArgs) -> Result<(), Failure> {
    let store = open(global)?;
    let run = queue::active_run(&store).context("reading settings")?;
    let taken = |what: &str| match &run {
        Some(owner) => format!(
            "a running `upload run` ({owner}) takes {what} within {} s",
            queue::POLL.as_secs()
        ),
        None => format!("no `upload run` is active: the next `upload run` takes {what}"),
    };
    match (args.budget, args.clear) {
        (Some(b), _) => {
            store
                .set_setting(queue::BUDGET_OVERRIDE, &b.to_string())
                .context("saving the budget")?;
            println!("{}", override_line(b));
            match &run {
                Some(_) => println!("{}", taken("it")),
                None => println!(
                    "no `upload run` is active: the budget is saved, and the next `upload run` \
                     sends at {b} whatever its timetable says, until `upload limit --clear`"
                ),
            }
        }
        (None, true) => {
            let had = budget_override(&store)?;
            store
                .delete_setting(queue::BUDGET_OVERRIDE)
                .context("clearing the budget")?;
            let tt = effective_timetable(&store, global)?;
            match had {
                Some(b) => println!("cleared the budget {b}; back to {}", timetable_words(&tt)),
                None => println!("no budget was set; {}", timetable_words(&tt)),
            }
            if run.is_some() {
                println!("{}", taken("the timetable's"));
            }
        }
        (None, false) => {
            let now = clock()?.now();
            let tt = effective_timetable(&store, global)?;
            match budget_override(&store)? {
                Some(b) => println!("{}", override_line(b)),
                None if tt == Timetable::constant(Budget::Unlimited) => {
                    println!("no budget is set: {}", timetable_words(&tt))
                }
                None => println!(
                    "no budget is set: {}, {} now",
                    timetable_words(&tt),
                    queue::budget_in_force(&tt, None, &now)
                ),
            }
            match &run {
                Some(owner) => println!("a running `upload run` ({owner}) sends by it"),
                None => println!("no `upload run` is active"),
            }
        }
    }
    Ok(())
}
