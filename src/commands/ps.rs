//! `ps`: the host pids of every process in the guest (json), or host
//! ps(1)'s table limited to them (as runc does).

use std::process::Command;

use crate::cli::{GlobalOpts, ListFormat, PsArgs};
use crate::error::{Error, Result};
use crate::lifecycle;
use crate::state::Store;

pub fn run(global: &GlobalOpts, args: &PsArgs) -> Result<i32> {
    let store = Store::open(&global.root)?;
    let record = lifecycle::load(&store, &args.id)?;
    let pids = lifecycle::guest_pids(&store, &record)?;
    match args.format {
        ListFormat::Json => {
            println!("{}", serde_json::to_string(&pids).expect("serializes"));
        }
        ListFormat::Table => {
            let ps_args: Vec<String> = if args.ps_args.is_empty() {
                vec!["-ef".into()]
            } else {
                args.ps_args.clone()
            };
            let out = Command::new("ps")
                .args(&ps_args)
                .output()
                .map_err(|e| Error::io("ps", e))?;
            if !out.status.success() {
                return Err(Error::Ps {
                    args: ps_args.join(" "),
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            print!(
                "{}",
                filter_table(&String::from_utf8_lossy(&out.stdout), &pids)?
            );
        }
    }
    Ok(0)
}

/// The header and the rows whose PID column is one of `pids`.
fn filter_table(table: &str, pids: &[i32]) -> Result<String> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split_whitespace()
        .position(|h| h == "PID")
        .ok_or_else(|| Error::Usage("ps output has no PID column".into()))?;
    let mut out = format!("{header}\n");
    for line in lines {
        let pid = line
            .split_whitespace()
            .nth(col)
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rows_are_kept_by_their_pid_column() {
        let t = "UID PID PPID CMD\nroot 1 0 init\nroot 42 1 sh\nroot 43 42 sleep 42\n";
        assert_eq!(
            super::filter_table(t, &[42]).unwrap(),
            "UID PID PPID CMD\nroot 42 1 sh\n"
        );
        assert!(super::filter_table("A B\n1 2\n", &[1]).is_err());
    }
}
