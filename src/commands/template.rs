//! `template list|prune`: nexcage's converted templates on the node's
//! template storage, listed and removed through pveam.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::json;

use crate::backend::proxmox::template::cache::{self, Keep, PruneFilter};
use crate::backend::proxmox::Driver;
use crate::cli::{GlobalOpts, ListFormat, TemplateCommand, TemplatePruneArgs};
use crate::error::{Error, Result};
use crate::state::Store;

pub fn run(global: &GlobalOpts, command: &TemplateCommand) -> Result<i32> {
    match command {
        TemplateCommand::List(a) => {
            let (driver, entries, in_use) = inventory(global)?;
            list(&driver, &entries, &in_use, a.format)
        }
        TemplateCommand::Prune(a) => {
            // Checked before anything is asked of the node.
            let filter = filter_of(a)?;
            let (driver, entries, in_use) = inventory(global)?;
            prune(&driver, &entries, &in_use, filter, a.format)
        }
    }
}

/// The node's templates and, by template name, the containers of this root
/// created from them.
type Inventory = (Driver, Vec<cache::Entry>, BTreeMap<String, Vec<String>>);

fn inventory(global: &GlobalOpts) -> Result<Inventory> {
    let (settings, store) = super::context(global)?;
    let driver = Driver::new(settings.proxmox.clone(), store.root());
    let in_use = containers_by_template(&store)?;
    let entries = driver.templates()?;
    Ok((driver, entries, in_use))
}

fn filter_of(a: &TemplatePruneArgs) -> Result<PruneFilter> {
    let older_than = a
        .older_than
        .as_deref()
        .map(cache::parse_age)
        .transpose()
        .map_err(|e| Error::Usage(format!("--older-than: {e}")))?;
    Ok(PruneFilter {
        all: a.all,
        older_than,
    })
}

/// Template name -> ids of this root's containers created from it.
fn containers_by_template(store: &Store) -> Result<BTreeMap<String, Vec<String>>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in store.ids()? {
        // Deleted while we look: not a user any more.
        let Ok(Some(record)) = store.load(&id) else {
            continue;
        };
        if let Some((_, name)) = record
            .template
            .as_deref()
            .and_then(|v| v.split_once(":vztmpl/"))
        {
            map.entry(name.to_string()).or_default().push(id);
        }
    }
    Ok(map)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn list(
    driver: &Driver,
    entries: &[cache::Entry],
    in_use: &BTreeMap<String, Vec<String>>,
    format: ListFormat,
) -> Result<i32> {
    let temps = driver.template_temps()?;
    let none = Vec::new();
    let mut rows = Vec::new();
    for e in entries {
        let users = in_use.get(&e.name).unwrap_or(&none);
        let busy = driver.template_busy(&e.name)?;
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
    driver: &Driver,
    entries: &[cache::Entry],
    in_use: &BTreeMap<String, Vec<String>>,
    filter: PruneFilter,
    format: ListFormat,
) -> Result<i32> {
    let now = SystemTime::now();
    let mut removed = Vec::new();
    let mut kept = Vec::new();
    let mut failure = None;
    for e in entries {
        let reason = match cache::prune_choice(e, in_use.contains_key(&e.name), filter, now) {
            Err(Keep::InUse) => "in use",
            Err(Keep::Recent) => "recent",
            Ok(()) => match driver.remove_template(e) {
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
