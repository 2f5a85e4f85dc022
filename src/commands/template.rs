//! `template list|prune`: the images the backend keeps converted (Proxmox:
//! templates on the node's template storage, listed and removed through
//! pveam), and which of this root's containers were created from each.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::backend::{Template, TemplateStore};
use crate::cli::{GlobalOpts, ListFormat, TemplateCommand, TemplatePruneArgs};
use crate::error::{Error, Result};
use crate::router;
use crate::state::Store;

pub fn run(global: &GlobalOpts, command: &TemplateCommand) -> Result<i32> {
    match command {
        TemplateCommand::List(a) => {
            let (backend, entries, in_use) = inventory(global)?;
            list(store_of(&*backend)?, &entries, &in_use, a.format)
        }
        TemplateCommand::Prune(a) => {
            // Checked before anything is asked of the node.
            let filter = filter_of(a)?;
            let (backend, entries, in_use) = inventory(global)?;
            prune(store_of(&*backend)?, &entries, &in_use, filter, a.format)
        }
    }
}

/// The node's templates and, by template name, the containers of this root
/// created from them.
type Inventory = (
    Box<dyn crate::backend::Backend>,
    Vec<Template>,
    BTreeMap<String, Vec<String>>,
);

/// The default backend keeps the templates its creates convert.
fn inventory(global: &GlobalOpts) -> Result<Inventory> {
    let (settings, store) = super::context(global)?;
    let backend = router::open_default(&settings, store.root())?;
    let templates = store_of(&*backend)?;
    let in_use = containers_by_template(&store, templates)?;
    let entries = templates.list()?;
    Ok((backend, entries, in_use))
}

fn store_of(backend: &dyn crate::backend::Backend) -> Result<&dyn TemplateStore> {
    backend
        .templates()
        .ok_or_else(|| Error::NoTemplates(backend.name()))
}

fn filter_of(a: &TemplatePruneArgs) -> Result<PruneFilter> {
    let older_than = a
        .older_than
        .as_deref()
        .map(parse_age)
        .transpose()
        .map_err(|e| Error::Usage(format!("--older-than: {e}")))?;
    Ok(PruneFilter {
        all: a.all,
        older_than,
    })
}

/// Template name -> ids of this root's containers created from it.
fn containers_by_template(
    store: &Store,
    templates: &dyn TemplateStore,
) -> Result<BTreeMap<String, Vec<String>>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in store.ids()? {
        // Deleted while we look: not a user any more.
        let Ok(Some(record)) = store.load(&id) else {
            continue;
        };
        if let Some(name) = templates.used_by(&record.backend_data) {
            map.entry(name).or_default().push(id);
        }
    }
    Ok(map)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn list(
    templates: &dyn TemplateStore,
    entries: &[Template],
    in_use: &BTreeMap<String, Vec<String>>,
    format: ListFormat,
) -> Result<i32> {
    let temps = templates.temporaries()?;
    let none = Vec::new();
    let mut rows = Vec::new();
    for e in entries {
        let users = in_use.get(&e.name).unwrap_or(&none);
        let busy = templates.busy(&e.name)?;
        rows.push((e, users, busy));
    }
    match format {
        ListFormat::Json => {
            let v: Vec<_> = rows
                .iter()
                .map(|(e, users, busy)| {
                    json!({
                        "name": e.name,
                        "volid": e.volid,
                        "bytes": e.bytes,
                        "lastUsed": rfc3339(e.last_used),
                        "lastUsedRecorded": e.recorded,
                        "containers": users,
                        "busy": busy,
                    })
                })
                .collect();
            let out = json!({
                "templates": v,
                "temporaries": {
                    "stale": temps.stale,
                    "staleBytes": temps.stale_bytes,
                    "other": temps.other,
                    "otherBytes": temps.other_bytes,
                },
            });
            println!("{out}");
        }
        ListFormat::Table => {
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|(e, users, busy)| {
                    vec![
                        e.volid.clone(),
                        e.bytes.to_string(),
                        rfc3339(e.last_used),
                        if *busy { "yes" } else { "no" }.to_string(),
                        users.join(","),
                    ]
                })
                .collect();
            print!(
                "{}",
                super::table(
                    &["VOLID", "BYTES", "LAST USED", "BUSY", "CONTAINERS"],
                    &body
                )
            );
            println!(
                "temporaries: {} stale ({} bytes, removed by the next conversion), {} being written or another node's ({} bytes)",
                temps.stale, temps.stale_bytes, temps.other, temps.other_bytes
            );
        }
    }
    Ok(0)
}

fn prune(
    templates: &dyn TemplateStore,
    entries: &[Template],
    in_use: &BTreeMap<String, Vec<String>>,
    filter: PruneFilter,
    format: ListFormat,
) -> Result<i32> {
    let now = SystemTime::now();
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    let mut failure = None;
    for e in entries {
        let reason = match prune_choice(e, in_use.contains_key(&e.name), filter, now) {
            Err(Keep::InUse) => "in use",
            Err(Keep::Recent) => "recent",
            Ok(()) => match templates.remove(e) {
                Ok(true) => {
                    removed.push(e);
                    continue;
                }
                Ok(false) => "busy",
                Err(err) => {
                    // The rest are still tried; the first failure is the exit.
                    failure.get_or_insert(err);
                    "failed"
                }
            },
        };
        kept.push((e, reason));
    }
    let freed: u64 = removed.iter().map(|e| e.bytes).sum();
    match format {
        ListFormat::Json => {
            let out = json!({
                "removed": removed.iter().map(|e| json!({
                    "name": e.name, "volid": e.volid, "bytes": e.bytes,
                })).collect::<Vec<_>>(),
                "bytesFreed": freed,
                "kept": kept.iter().map(|(e, why)| json!({
                    "name": e.name, "volid": e.volid, "reason": why,
                })).collect::<Vec<_>>(),
            });
            println!("{out}");
        }
        ListFormat::Table => {
            let mut body: Vec<Vec<String>> = removed
                .iter()
                .map(|e| vec![e.volid.clone(), e.bytes.to_string(), "removed".into()])
                .collect();
            body.extend(kept.iter().map(|(e, why)| {
                vec![
                    e.volid.clone(),
                    e.bytes.to_string(),
                    format!("kept ({why})"),
                ]
            }));
            print!("{}", super::table(&["VOLID", "BYTES", "ACTION"], &body));
            println!("freed {freed} bytes");
        }
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(0),
    }
}

/// What `template prune` asks for.
#[derive(Debug, Clone, Copy, Default)]
struct PruneFilter {
    /// Include templates containers of this root were created from.
    all: bool,
    /// Only those last used longer ago than this.
    older_than: Option<Duration>,
}

/// Why prune leaves a template it was asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Containers of this root were created from it (without `--all`).
    InUse,
    /// Used more recently than `--older-than`.
    Recent,
}

/// Whether prune should remove `e` (busy ones are found out at removal).
fn prune_choice(
    e: &Template,
    in_use: bool,
    filter: PruneFilter,
    now: SystemTime,
) -> Result<(), Keep> {
    if in_use && !filter.all {
        return Err(Keep::InUse);
    }
    if let Some(age) = filter.older_than {
        // A use "in the future" (clock stepped back) counts as recent.
        let idle = now.duration_since(e.last_used).unwrap_or(Duration::ZERO);
        if idle <= age {
            return Err(Keep::Recent);
        }
    }
    Ok(())
}

/// `7d`, `12h`, `30m`, `45s`, `2w`: a whole number and one unit.
fn parse_age(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration {text:?}: want a number and a unit (s, m, h, d, w), like 7d");
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .filter(|&i| i > 0)
        .ok_or_else(bad)?;
    let (num, unit) = text.split_at(unit_at);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad()),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn entry(name: &str, bytes: u64, age: u64) -> Template {
        Template::sample(name, bytes, age)
    }

    #[test]
    fn prune_keeps_in_use_unless_all_and_recent_ones_with_older_than() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let old = entry("old", 1, 3 * 86_400);
        let new = entry("new", 1, 3600);
        let f = PruneFilter::default();
        assert_eq!(prune_choice(&old, false, f, now), Ok(()));
        assert_eq!(prune_choice(&old, true, f, now), Err(Keep::InUse));
        let all = PruneFilter { all: true, ..f };
        assert_eq!(prune_choice(&old, true, all, now), Ok(()));
        let day = PruneFilter {
            older_than: Some(Duration::from_secs(86_400)),
            ..f
        };
        assert_eq!(prune_choice(&old, false, day, now), Ok(()));
        assert_eq!(prune_choice(&new, false, day, now), Err(Keep::Recent));
        assert_eq!(prune_choice(&old, true, day, now), Err(Keep::InUse));
        let later = entry("x", 1, 0);
        let past = UNIX_EPOCH + Duration::from_secs(10);
        assert_eq!(prune_choice(&later, false, day, past), Err(Keep::Recent));
    }

    #[test]
    fn ages_need_a_number_and_a_unit() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "d",
            "7",
            "7x",
            "-1d",
            "1.5h",
            "7 d",
            "99999999999999999999w",
        ] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
