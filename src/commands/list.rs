use crate::cli::{GlobalOpts, ListArgs, ListFormat};
use crate::error::Result;
use crate::lifecycle;
use crate::state::{OciState, Store};

pub fn run(global: &GlobalOpts, args: &ListArgs) -> Result<i32> {
    let store = Store::open(&global.root)?;
    let mut states: Vec<OciState> = Vec::new();
    for id in store.ids()? {
        // A container deleted while we list is simply not listed.
        if let Ok(Some(record)) = store.load(&id) {
            states.push(record.oci_state(lifecycle::status(&store, &record)));
        }
    }
    if args.quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(0);
    }
    match args.format {
        ListFormat::Json => println!("{}", serde_json::to_string(&states).expect("serializes")),
        ListFormat::Table => {
            let rows: Vec<[String; 6]> = states
                .iter()
                .map(|s| {
                    [
                        s.id.clone(),
                        s.pid.to_string(),
                        s.status.to_string(),
                        s.bundle.display().to_string(),
                        s.created.clone(),
                        s.owner.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
                    &rows
                )
            );
        }
    }
    Ok(0)
}

/// Columns padded to their widest cell plus three, as runc's tabwriter does.
fn table(header: &[&str; 6], rows: &[[String; 6]]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}", w = widths[i] + 3));
            }
        }
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_columns_line_up() {
        let t = super::table(
            &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
            &[[
                "c1".into(),
                "42".into(),
                "running".into(),
                "/b".into(),
                "t".into(),
                "".into(),
            ]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].find("PID"), lines[1].find("42"));
        assert_eq!(lines[0].find("STATUS"), lines[1].find("running"));
    }
}
