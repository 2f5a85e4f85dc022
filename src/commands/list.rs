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
                super::table(
                    &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
                    &rows
                )
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_columns_line_up() {
        let t = crate::commands::table(
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
