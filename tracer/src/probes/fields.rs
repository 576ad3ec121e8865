//! [`Fields`] from this kernel's tracepoint `format` files and its BTF.

use std::path::Path;

use tracer_common::fields::Fields;

use crate::{
    error::{Error, Result},
    kernel::{
        btf::{Arg, Btf, VMLINUX},
        tracefs::{Format, largest_state_flag},
    },
};

/// Reads every offset the programs use. `futex_waitv` (Linux 5.16) is optional: without it
/// those offsets stay 0 and its programs are not attached.
pub fn read(tracefs_root: &Path) -> Result<Fields> {
    let switch = Format::read(tracefs_root, "sched", "sched_switch")?;
    let futex = Format::read(tracefs_root, "syscalls", "sys_enter_futex")?;
    let futex_exit = Format::read(tracefs_root, "syscalls", "sys_exit_futex")?;
    let waitv = Format::read(tracefs_root, "syscalls", "sys_enter_futex_waitv").ok();
    let mut fields = from_formats(&switch, &futex, &futex_exit, waitv.as_ref())?;
    if !Path::new(VMLINUX).exists() {
        return Err(Error::UnsupportedKernel(format!(
            "this kernel has no BTF ({VMLINUX} is missing): tracer needs a kernel built with \
             CONFIG_DEBUG_INFO_BTF=y (Linux 5.5 or later) to read its scheduler's arguments"
        )));
    }
    add_btf(&mut fields, &Btf::from_kernel()?)?;
    Ok(fields)
}

/// The futex offsets from the syscall tracepoints' formats, and the preemption bit from
/// `sched_switch`'s print format, checking the widths the programs read.
pub fn from_formats(
    switch: &Format,
    futex: &Format,
    futex_exit: &Format,
    waitv: Option<&Format>,
) -> Result<Fields> {
    let largest_flag = largest_state_flag(&switch.print_fmt).ok_or_else(|| {
        Error::UnsupportedKernel(
            "sched_switch's print format lists no prev_state flags, so its report of a \
             preemption is unknown"
                .into(),
        )
    })?;
    // `sys_enter_*` arguments are `long`-sized whatever their C type.
    let op = futex.field("op", None)?;
    if op.size != 4 && op.size != 8 {
        return Err(Error::UnsupportedKernel(format!(
            "sys_enter_futex `op` is {} bytes",
            op.size
        )));
    }
    let (waitv_waiters, waitv_nr_futexes) = match waitv {
        Some(w) => (w.offset("waiters", 8)?, w.field("nr_futexes", None)?.offset),
        None => (0, 0),
    };
    Ok(Fields {
        futex_uaddr: futex.offset("uaddr", 8)?,
        futex_op: op.offset,
        waitv_waiters,
        waitv_nr_futexes,
        sys_exit_ret: futex_exit.offset("ret", 8)?,
        switch_preempt_bit: largest_flag << 1,
        ..Fields::UNSET
    })
}

/// Checks the arguments of the BTF tracepoints the programs attach to, and adds the
/// `task_struct` offsets they read.
pub fn add_btf(fields: &mut Fields, btf: &Btf) -> Result<()> {
    let task = || Arg::Pointer("task_struct".into());
    let expect = |name: &str, args: &[Arg]| -> Result<Vec<Arg>> {
        let found = btf.tracepoint_args(name)?;
        if found.len() >= args.len() && found[..args.len()] == *args {
            Ok(found)
        } else {
            Err(Error::UnsupportedKernel(format!(
                "tracepoint {name} passes {found:?}, where tracer reads {args:?}"
            )))
        }
    };
    expect("sched_switch", &[Arg::Int(1), task(), task(), Arg::Int(4)])?;
    for name in ["sched_wakeup", "sched_wakeup_new", "sched_waking"] {
        expect(name, &[task()])?;
    }
    expect("task_newtask", &[task(), Arg::Int(8)])?;
    expect("task_rename", &[task(), Arg::Pointer(String::new())])?;
    let exit = expect("sched_process_exit", &[task()])?;
    fields.exit_group_dead = u32::from(exit.get(1) == Some(&Arg::Int(1)));

    let member = |path: &str, size: u32| -> Result<u32> {
        let member = btf.member("task_struct", path)?;
        if member.size == size {
            Ok(member.offset)
        } else {
            Err(Error::UnsupportedKernel(format!(
                "task_struct.{path} is {} bytes, where tracer reads {size}",
                member.size
            )))
        }
    };
    fields.task_pid = member("pid", 4)?;
    fields.task_tgid = member("tgid", 4)?;
    fields.task_prio = member("prio", 4)?;
    fields.task_comm = member("comm", 16)?;
    fields.task_exit_state = member("exit_state", 4)?;
    // `task_cpu()`: in `thread_info` when that is part of the task (most architectures).
    fields.task_cpu = member("thread_info.cpu", 4).or_else(|_| member("cpu", 4))?;
    fields.task_nvcsw = member("nvcsw", 8)?;
    fields.task_nivcsw = member("nivcsw", 8)?;
    fields.task_sum_exec_runtime = member("se.sum_exec_runtime", 8)?;
    fields.task_run_delay = member("sched_info.run_delay", 8)?;
    // Optional: without it, futex waits are traced by the syscall tracepoints only.
    let _ = add_user_regs(fields, btf);
    Ok(())
}

/// Where `struct pt_regs` (a task's saved user registers) holds, on this architecture, the
/// member and byte offset within it of the system call number and of its first two
/// arguments, while the task is in a system call.
#[cfg(target_arch = "x86_64")]
const USER_REGS: [(&str, u32); 3] = [("orig_ax", 0), ("di", 0), ("si", 0)];
#[cfg(target_arch = "aarch64")]
const USER_REGS: [(&str, u32); 3] = [("syscallno", 0), ("orig_x0", 0), ("regs", 8)];

/// Adds where a task's saved user registers say which system call it is in and with which
/// first two arguments, and this architecture's numbers of `futex` and `futex_waitv` (see
/// [`tracer_common::fields::Settings::futex_at_switch`]). Leaves them 0 on an architecture
/// tracer does not know these for, or a kernel whose BTF lacks them.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn add_user_regs(fields: &mut Fields, btf: &Btf) -> Result<()> {
    let mut offsets = [0; 3];
    for (i, (path, within)) in USER_REGS.into_iter().enumerate() {
        let member = btf.member("pt_regs", path)?;
        // The syscall number is read as 4 bytes, the arguments as 8.
        let read = if i == 0 { 4 } else { 8 };
        if member.size < within + read {
            return Err(Error::UnsupportedKernel(format!(
                "pt_regs.{path} is {} bytes, where tracer reads {read} at byte {within}",
                member.size
            )));
        }
        offsets[i] = member.offset + within;
    }
    [fields.regs_syscall, fields.regs_arg0, fields.regs_arg1] = offsets;
    fields.sys_futex = libc::SYS_futex as u32;
    fields.sys_futex_waitv = libc::SYS_futex_waitv as u32;
    Ok(())
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn add_user_regs(_: &mut Fields, _: &Btf) -> Result<()> {
    Err(Error::UnsupportedKernel(
        "tracer does not know this architecture's saved user registers".into(),
    ))
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
        let fields = read(&root).unwrap();
        assert_eq!(fields.switch_preempt_bit.count_ones(), 1);
        // Every syscall field lies past the 8-byte common header.
        assert!(fields.futex_uaddr >= 8 && fields.sys_exit_ret >= 8);
        assert_ne!(fields.task_pid, 0);
        assert_ne!(fields.task_comm, fields.task_pid);
        assert_ne!(fields.task_nvcsw, 0);
        // This machine's architecture is one whose user registers tracer knows.
        assert_ne!(fields.sys_futex, 0);
        assert!(fields.regs_syscall != fields.regs_arg0 && fields.regs_arg0 != fields.regs_arg1);
    }
}
