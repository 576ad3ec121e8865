//! [`Fields`] from this kernel's tracepoint `format` files.

use std::path::Path;

use tracer_common::fields::Fields;

use crate::{
    error::{Error, Result},
    kernel::{
        btf::Btf,
        tracefs::{Format, largest_state_flag},
    },
};

/// Reads the offsets of every field the programs use. `futex_waitv` (Linux 5.16) is optional:
/// without it those offsets stay 0 and its programs are not attached.
pub fn from_tracefs(root: &Path) -> Result<Fields> {
    let switch = Format::read(root, "sched", "sched_switch")?;
    let wakeup = Format::read(root, "sched", "sched_wakeup")?;
    let wakeup_new = Format::read(root, "sched", "sched_wakeup_new")?;
    let waking = Format::read(root, "sched", "sched_waking")?;
    let newtask = Format::read(root, "task", "task_newtask")?;
    let rename = Format::read(root, "task", "task_rename")?;
    let exit = Format::read(root, "sched", "sched_process_exit")?;
    let futex = Format::read(root, "syscalls", "sys_enter_futex")?;
    let futex_exit = Format::read(root, "syscalls", "sys_exit_futex")?;
    let waitv = Format::read(root, "syscalls", "sys_enter_futex_waitv").ok();
    from_formats(&Formats {
        switch: &switch,
        wakeup: &wakeup,
        wakeup_new: &wakeup_new,
        waking: &waking,
        newtask: &newtask,
        rename: &rename,
        exit: &exit,
        futex: &futex,
        futex_exit: &futex_exit,
        waitv: waitv.as_ref(),
    })
}

/// Adds the offsets of the kernel's per-thread counters in `task_struct`, from BTF. Without
/// BTF the programs derive every counter from events alone, which is less exact: returns why.
pub fn add_task_counters(fields: &mut Fields) -> std::result::Result<(), String> {
    let btf = Btf::from_kernel().map_err(|e| e.to_string())?;
    let eight_bytes = |path: &str| -> std::result::Result<u32, String> {
        let member = btf.member("task_struct", path).map_err(|e| e.to_string())?;
        if member.size == 8 {
            Ok(member.offset)
        } else {
            Err(format!(
                "task_struct.{path} is {} bytes, expected 8",
                member.size
            ))
        }
    };
    fields.task_nvcsw = eight_bytes("nvcsw")?;
    fields.task_nivcsw = eight_bytes("nivcsw")?;
    // The programs read both switch counters in one go.
    if fields.task_nivcsw != fields.task_nvcsw + 8 {
        return Err("task_struct.nivcsw does not directly follow nvcsw".into());
    }
    fields.task_sum_exec_runtime = eight_bytes("se.sum_exec_runtime")?;
    fields.task_run_delay = eight_bytes("sched_info.run_delay")?;
    fields.task_counters = 1;
    Ok(())
}

/// The formats [`from_formats`] reads.
pub struct Formats<'a> {
    pub switch: &'a Format,
    pub wakeup: &'a Format,
    pub wakeup_new: &'a Format,
    pub waking: &'a Format,
    pub newtask: &'a Format,
    pub rename: &'a Format,
    pub exit: &'a Format,
    pub futex: &'a Format,
    pub futex_exit: &'a Format,
    pub waitv: Option<&'a Format>,
}

/// Field offsets from parsed formats, checking the widths the programs read.
pub fn from_formats(f: &Formats<'_>) -> Result<Fields> {
    let largest_flag = largest_state_flag(&f.switch.print_fmt).ok_or_else(|| {
        Error::UnsupportedKernel(
            "sched_switch's print format lists no prev_state flags, so preemption cannot be told \
             from blocking"
                .into(),
        )
    })?;
    let preempt_bit = largest_flag << 1;
    // `sys_enter_*` arguments are `long`-sized whatever their C type.
    let op = f.futex.field("op", None)?;
    if op.size != 4 && op.size != 8 {
        return Err(Error::UnsupportedKernel(format!(
            "sys_enter_futex `op` is {} bytes",
            op.size
        )));
    }
    // The wakeup offsets are shared, so the three tracepoints must agree.
    for name in ["pid", "prio", "target_cpu"] {
        let offset = f.wakeup.offset(name, 4)?;
        for (other, format) in [
            ("sched_wakeup_new", f.wakeup_new),
            ("sched_waking", f.waking),
        ] {
            if format.offset(name, 4)? != offset {
                return Err(Error::UnsupportedKernel(format!(
                    "sched_wakeup and {other} differ in the layout of `{name}`"
                )));
            }
        }
    }
    let (waitv_waiters, waitv_nr_futexes) = match f.waitv {
        Some(w) => (w.offset("waiters", 8)?, w.field("nr_futexes", None)?.offset),
        None => (0, 0),
    };
    Ok(Fields {
        switch_prev_pid: f.switch.offset("prev_pid", 4)?,
        switch_prev_prio: f.switch.offset("prev_prio", 4)?,
        switch_prev_state: f.switch.offset("prev_state", 8)?,
        switch_next_pid: f.switch.offset("next_pid", 4)?,
        switch_next_prio: f.switch.offset("next_prio", 4)?,
        wakeup_pid: f.wakeup.offset("pid", 4)?,
        wakeup_prio: f.wakeup.offset("prio", 4)?,
        wakeup_target_cpu: f.wakeup.offset("target_cpu", 4)?,
        newtask_pid: f.newtask.offset("pid", 4)?,
        newtask_comm: f.newtask.offset("comm", 16)?,
        newtask_clone_flags: f.newtask.offset("clone_flags", 8)?,
        rename_pid: f.rename.offset("pid", 4)?,
        rename_oldcomm: f.rename.offset("oldcomm", 16)?,
        rename_newcomm: f.rename.offset("newcomm", 16)?,
        exit_pid: f.exit.offset("pid", 4)?,
        exit_group_dead: f.exit.offset("group_dead", 1)?,
        futex_uaddr: f.futex.offset("uaddr", 8)?,
        futex_op: op.offset,
        waitv_waiters,
        waitv_nr_futexes,
        sys_exit_ret: f.futex_exit.offset("ret", 8)?,
        _pad: 0,
        switch_preempt_bit: preempt_bit,
        switch_state_mask: preempt_bit - 1,
        ..Fields::UNSET
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tracefs;

    #[test]
    fn this_kernels_layout_is_read() {
        let Some(root) = tracefs::find() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "tracefs must be mounted under CI"
            );
            eprintln!("skipped: tracefs is not mounted here (run as root, or `tracer check`)");
            return;
        };
        let fields = from_tracefs(&root).unwrap();
        // Every field the programs read lies past the 8-byte common header.
        assert!(fields.switch_prev_pid >= 8 && fields.switch_next_pid > fields.switch_prev_pid);
        assert_eq!(fields.switch_preempt_bit.count_ones(), 1);
        assert_eq!(fields.switch_state_mask, fields.switch_preempt_bit - 1);
        assert!(fields.futex_uaddr >= 8 && fields.sys_exit_ret >= 8);
    }
}
