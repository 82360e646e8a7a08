//! Tracepoint record layouts from tracefs `format` files.
//!
//! Classic tracepoint layouts differ between kernels (Linux 6.18 made the comm
//! fields of `sched_process_fork` `__data_loc` strings, moving `child_pid`
//! from offset 44 to 20; `group_dead` appeared in `sched_process_exit`), so
//! the offsets the programs use are read here and set as load-time globals.
use std::{collections::HashMap, path::Path};

use thiserror::Error;
use zt_common::globals;

#[derive(Debug, Error)]
pub enum FormatError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint}: field {field:?} missing from its format")]
    MissingField { tracepoint: String, field: String },
}

/// Field name -> (offset, size) of one tracepoint's record.
pub fn parse_format(text: &str) -> HashMap<String, (u32, u32)> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else { continue };
        // "field:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;"
        let mut parts = rest.split(';').map(str::trim);
        let decl = parts.next().unwrap_or_default();
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        // The name is the last identifier of the declaration ("char comm[16]").
        let name = decl.rsplit(' ').next().unwrap_or_default();
        let name = name.split('[').next().unwrap_or_default();
        if let (Some(o), Some(s)) = (offset, size)
            && !name.is_empty()
        {
            fields.insert(name.to_string(), (o, s));
        }
    }
    fields
}

/// The globals (name, value) the programs need, read from `tracefs`.
pub fn program_offsets(tracefs: &Path) -> Result<Vec<(&'static str, u32)>, FormatError> {
    let read = |tp: &str| {
        let path = tracefs.join("events").join(tp).join("format");
        std::fs::read_to_string(&path)
            .map(|t| parse_format(&t))
            .map_err(|source| FormatError::Read { path: path.display().to_string(), source })
    };
    let fork = read("sched/sched_process_fork")?;
    let exec = read("sched/sched_process_exec")?;
    let exit = read("sched/sched_process_exit")?;
    let need = |fields: &HashMap<String, (u32, u32)>, tp: &str, field: &str| {
        fields.get(field).map(|(o, _)| *o).ok_or_else(|| FormatError::MissingField { tracepoint: tp.into(), field: field.into() })
    };
    // Optional: without it (or its fields) the migration hook is not attached.
    let attach = read("cgroup/cgroup_attach_task").unwrap_or_default();
    let attach_field = |field: &str| attach.get(field).map(|(o, _)| *o).unwrap_or(globals::ABSENT);
    // Optional too: without it, io_uring socket creation is not guarded.
    let uring = read("io_uring/io_uring_submit_req").unwrap_or_default();
    let uring_field = |field: &str| uring.get(field).map(|(o, _)| *o).unwrap_or(globals::ABSENT);
    Ok(vec![
        (globals::URING_REQ, uring_field("req")),
        (globals::URING_OPCODE, uring_field("opcode")),
        (globals::ATTACH_DST_ROOT, attach_field("dst_root")),
        (globals::ATTACH_DST_ID, attach_field("dst_id")),
        (globals::ATTACH_PID, attach_field("pid")),
        (globals::FORK_PARENT_PID, need(&fork, "sched_process_fork", "parent_pid")?),
        (globals::FORK_CHILD_PID, need(&fork, "sched_process_fork", "child_pid")?),
        (globals::EXEC_FILENAME, need(&exec, "sched_process_exec", "filename")?),
        (globals::EXEC_OLD_PID, need(&exec, "sched_process_exec", "old_pid")?),
        (globals::EXIT_GROUP_DEAD, exit.get("group_dead").map(|(o, _)| *o).unwrap_or(globals::ABSENT)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORK_618: &str = "name: sched_process_fork
ID: 366
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;
";
    const FORK_61: &str = "format:
\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;
";

    #[test]
    fn both_fork_layouts() {
        let new = parse_format(FORK_618);
        assert_eq!(new["child_pid"], (20, 4));
        assert_eq!(new["parent_comm"], (8, 4));
        let old = parse_format(FORK_61);
        assert_eq!(old["child_pid"], (44, 4));
        assert_eq!(old["child_comm"], (28, 16));
    }

    #[test]
    fn missing_dir_is_a_clear_error() {
        let e = program_offsets(Path::new("/nonexistent-tracefs")).unwrap_err();
        assert!(e.to_string().starts_with("reading /nonexistent-tracefs/events/sched/sched_process_fork/format"));
    }
}
