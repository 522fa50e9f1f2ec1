//! A transfer's payload: the file itself, or a delta recipe against a file the destination
//! already holds (issue 13).
//!
//! The recipe is sent as an ordinary upload of an ordinary file, so resume after kill -9,
//! pacing, per-chunk checksums, confirmed progress, the timetable and the queue apply to it
//! unchanged. [`prepare`] decides which payload a transfer sends, before the session starts:
//! - A transfer whose upload is a recipe keeps its recipe file
//!   (`<state dir>/recipes/<transfer id>.recipe`, beside the database), so a rerun resumes the
//!   same bytes. A recipe that went missing is made again, and the upload started over.
//! - A transfer whose full upload has begun stays a full upload.
//! - Otherwise the base is the one asked for (`--base NAME`), or a published file of the
//!   transfer's own name (the output says so), or none (`--no-base`). Its index is fetched,
//!   the file matched against it in one pass ([`crate::delta::make_recipe`]), and the recipe
//!   sent if it is smaller than the file.
//!
//! The source's identity is checked as for a full upload: the transfer's row holds the real
//! file's size and modification time, so a source changed since the recipe was made is
//! refused on the next start (`--restart` makes a new recipe), and one that changes while
//! the recipe is being made is refused at once.
//!
//! [`fall_back`]: when the destination refuses the recipe (its base gone, or changed since
//! its index), the transfer says why and becomes a full upload of the file.

use super::destination::{DeltaBase, Destination};
use super::retry::{Decision, Failing};
use super::source::Identity;
use super::{Event, SendError, SendOptions, blocking};
use crate::client::ClientError;
use crate::delta::{Index, Matched, RecipeReader, make_recipe};
use crate::store::{AsyncStore, BaseChoice, Transfer};
use crate::units::format_size;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What a session sends.
pub(super) struct Payload {
    pub(super) path: PathBuf,
    pub(super) identity: Identity,
    /// For a recipe: the base it was made against.
    pub(super) delta: Option<DeltaBase>,
    /// For a recipe: the new file's SHA-256 (hex), which the transfer is done with.
    pub(super) target_sha256: Option<String>,
}

impl Payload {
    pub(super) fn file(path: &Path, identity: Identity) -> Payload {
        Payload {
            path: path.to_path_buf(),
            identity,
            delta: None,
            target_sha256: None,
        }
    }
}

/// Where transfer `id`'s recipe is kept: beside the state database, or in the temporary
/// directory for a database in memory.
pub(super) fn recipe_path(store: &AsyncStore, id: i64) -> PathBuf {
    recipe_path_beside(store.path(), id)
}

/// [`recipe_path`] for the database at `db` (`None`: in memory).
fn recipe_path_beside(db: Option<&Path>, id: i64) -> PathBuf {
    let dir = match db.and_then(Path::parent) {
        Some(dir) => dir.join("recipes"),
        None => std::env::temp_dir().join(format!("upload-recipes-{}", std::process::id())),
    };
    dir.join(format!("{id}.recipe"))
}

/// Removes transfer `id`'s recipe, if any: it is done, refused, or restarted.
pub(super) fn forget_recipe(store: &AsyncStore, id: i64) {
    remove_recipe(store.path(), id);
}

/// Removes the recipe of transfer `id` of the database at `db`, if it has one (`upload queue
/// rm`: a removed transfer's recipe would stay forever).
pub fn remove_recipe(db: Option<&Path>, id: i64) {
    let path = recipe_path_beside(db, id);
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a recipe");
    }
}

/// The payload transfer `row` sends from `source` (see the module doc).
pub(super) async fn prepare<D: Destination>(
    store: &AsyncStore,
    row: &mut Transfer,
    opts: &SendOptions,
    source: &Path,
    identity: Identity,
    destination: &mut D,
    events: &(dyn Fn(Event) + Send + Sync),
) -> Result<Payload, SendError> {
    let recipe = recipe_path(store, row.id);
    if let Some(base) = row.delta_base.clone() {
        let kept = recipe.clone();
        match blocking(move || read_kept(&kept)).await {
            Ok((header, target, recipe_identity)) if header.target_length == identity.size => {
                events(Event::Notice(format!(
                    "resuming the delta against {base}: {} to send for {}",
                    format_size(recipe_identity.size),
                    format_size(identity.size)
                )));
                return Ok(Payload {
                    path: recipe,
                    identity: recipe_identity,
                    delta: Some(DeltaBase {
                        name: base,
                        sha256: header.base_sha256,
                    }),
                    target_sha256: Some(hex::encode(target)),
                });
            }
            outcome => {
                let why = match outcome {
                    Err(e) => e,
                    Ok(_) => "it is for another version of the file".into(),
                };
                events(Event::Notice(format!(
                    "the recipe of the delta against {base} cannot be used ({why}); \
                     making it again and starting over"
                )));
                *row = store
                    .reset_transfer(row.id, identity.size, identity.mtime_ns)
                    .await?;
            }
        }
    }
    if row.upload_url.is_some() {
        return Ok(Payload::file(source, identity));
    }
    let (base, implicit) = match &row.base {
        BaseChoice::Full => return Ok(Payload::file(source, identity)),
        BaseChoice::Named(name) => (name.clone(), false),
        BaseChoice::SameName => (row.name.clone(), true),
    };
    let Some(index) = fetch_index(destination, &base, opts, events).await? else {
        if !implicit {
            events(Event::Notice(format!(
                "the server has no published file {base:?} to send a delta against (or does \
                 not take delta uploads); sending the whole file"
            )));
        }
        return Ok(Payload::file(source, identity));
    };
    let index = match Index::decode(&index) {
        Ok(index) => index,
        Err(e) => {
            events(Event::Notice(format!(
                "the server's index of {base:?} is unusable ({e}); sending the whole file"
            )));
            return Ok(Payload::file(source, identity));
        }
    };
    let (src, out, base_name) = (source.to_path_buf(), recipe.clone(), base.clone());
    let made = blocking(move || make_recipe_file(&src, identity, &index, &base_name, &out))
        .await
        .map_err(|e| match e {
            Made::Changed(what) => SendError::SourceChanged {
                path: source.to_path_buf(),
                what,
            },
            Made::Io(e) => SendError::SourceUnreadable {
                path: source.to_path_buf(),
                source: e,
            },
        })?;
    let (matched, recipe_identity, base_sha256) = made;
    if matched.recipe_len >= identity.size {
        events(Event::Notice(format!(
            "a delta against {base} would be no smaller than the file ({} copied from it); \
             sending the whole file",
            format_percent(matched.copied_percent())
        )));
        forget_recipe(store, row.id);
        return Ok(Payload::file(source, identity));
    }
    store
        .set_payload(row.id, Some(base.clone()), Some(matched.recipe_len))
        .await?;
    row.delta_base = Some(base.clone());
    row.payload_size = Some(matched.recipe_len);
    if implicit {
        events(Event::Notice(format!(
            "the server already holds a file named {base}: sending the difference against it \
             (--no-base sends the whole file)"
        )));
    }
    events(Event::Notice(delta_line(&base, &matched, identity.size)));
    Ok(Payload {
        path: recipe,
        identity: recipe_identity,
        delta: Some(DeltaBase {
            name: base,
            sha256: base_sha256,
        }),
        target_sha256: Some(hex::encode(matched.target_sha256)),
    })
}

/// "delta against RC1.iso: 1.9 MiB of 1.0 GiB to send (98.2 % copied from the base)".
fn delta_line(base: &str, matched: &Matched, size: u64) -> String {
    format!(
        "delta against {base}: {} of {} to send ({} copied from the base)",
        format_size(matched.recipe_len),
        format_size(size),
        format_percent(matched.copied_percent())
    )
}

fn format_percent(p: f64) -> String {
    format!("{p:.1} %")
}

/// The destination's index of `base`, retried like any request while the link is down.
async fn fetch_index<D: Destination>(
    destination: &mut D,
    base: &str,
    opts: &SendOptions,
    events: &(dyn Fn(Event) + Send + Sync),
) -> Result<Option<Vec<u8>>, SendError> {
    let mut failing = Failing::new(opts.max_retries, opts.give_up_after);
    loop {
        match destination.index(base).await {
            Ok(index) => return Ok(index),
            Err(e) => match failing.decide(&e) {
                Decision::Stop => return Err(SendError::Server(e)),
                Decision::GiveUp { attempts } => {
                    return Err(SendError::GaveUp { attempts, error: e });
                }
                Decision::Retry { attempt, delay } => {
                    events(Event::Retry {
                        attempt,
                        delay,
                        error: e.to_string(),
                    });
                    destination.disconnect();
                    tokio::time::sleep(delay).await;
                }
            },
        }
    }
}

enum Made {
    Changed(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Made {
    fn from(e: std::io::Error) -> Self {
        Made::Io(e)
    }
}

/// Writes the recipe of `source` against `index` to `out` (whole, or not at all: through a
/// temporary file, synced, then renamed), and proves the source unchanged by the pass.
fn make_recipe_file(
    source: &Path,
    identity: Identity,
    index: &Index,
    base: &str,
    out: &Path,
) -> Result<(Matched, Identity, [u8; 32]), Made> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = out.with_extension("recipe.tmp");
    let file = std::fs::File::create(&tmp)?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
    let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(source)?);
    let matched = make_recipe(reader, identity.size, index, base, &mut writer)?;
    writer.flush()?;
    writer
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    let now = Identity::of(&std::fs::metadata(source)?);
    if let Some(what) = identity.difference(&now) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Made::Changed(format!(
            "{what} while its delta was being made"
        )));
    }
    std::fs::rename(&tmp, out)?;
    let recipe_identity = Identity::of(&std::fs::metadata(out)?);
    Ok((matched, recipe_identity, index.sha256))
}

/// A kept recipe's header, the target's SHA-256 (its last 32 bytes) and its identity.
fn read_kept(path: &Path) -> Result<(crate::delta::RecipeHeader, [u8; 32], Identity), String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let identity = Identity::of(&file.metadata().map_err(|e| e.to_string())?);
    let (header, _) =
        RecipeReader::open(std::io::BufReader::new(&file)).map_err(|e| e.to_string())?;
    let mut target = [0u8; 32];
    file.seek(SeekFrom::End(-32))
        .and_then(|_| file.read_exact(&mut target))
        .map_err(|e| e.to_string())?;
    Ok((header, target, identity))
}

/// The destination refused the recipe: say why, and make the transfer a full upload of the
/// file, for good (a rerun does not try the delta again).
pub(super) async fn fall_back(
    store: &AsyncStore,
    row: &mut Transfer,
    identity: Identity,
    why: &ClientError,
    events: &(dyn Fn(Event) + Send + Sync),
) -> Result<(), SendError> {
    let base = row.delta_base.clone().unwrap_or_default();
    events(Event::Notice(format!(
        "{why}; sending the whole file instead of the delta against {base}"
    )));
    store.set_base_choice(row.id, BaseChoice::Full).await?;
    *row = store
        .reset_transfer(row.id, identity.size, identity.mtime_ns)
        .await?;
    forget_recipe(store, row.id);
    Ok(())
}
