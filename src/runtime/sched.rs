//! The CPU scheduling policy the services run their threads under.
//!
//! A request wakes a chain of threads: every ZeroMQ hop wakes an I/O thread
//! and an application thread on each side, and the storage manager's workers
//! wake on every database reply. Where the services share cores with
//! PostgreSQL (the demo, a small lab machine, the benchmark's two cores), a
//! normally scheduled thread that is woken preempts whatever runs on its core,
//! most often a backend or WAL sender in the middle of a commit, which must be
//! switched back in a few microseconds later to finish and block. Under
//! `SCHED_BATCH` a thread keeps its fair share of the CPU but gives up that
//! wake-up preemption: it runs when the current thread blocks, which a busy
//! backend does within microseconds (on its commit or its next read). Measured
//! in docs/benchmark.md (runs D and F): at light load a quarter less CPU per
//! request in the services and lower latency; from 10 clients up the
//! difference is within the noise of the machine it was measured on.
//! `normal` keeps the kernel's default, for comparison or for a host where
//! the services have cores to themselves.
//!
//! The policy is set on the calling thread at the start of a service's `run`,
//! before it starts any thread, and every thread it starts inherits it
//! (libzmq's I/O threads re-apply the inherited policy). SCHED_BATCH is not a
//! real-time policy: it needs no privilege, and the units' `RestrictRealtime=`
//! still holds.

pub use biblioteca_protocol::scheduling::Scheduling;
use nix::libc;

/// The kernel policy behind each setting.
fn policy(scheduling: Scheduling) -> libc::c_int {
    match scheduling {
        Scheduling::Batch => libc::SCHED_BATCH,
        Scheduling::Normal => libc::SCHED_OTHER,
    }
}

/// Puts the calling thread (and the threads it starts from now on) under
/// `scheduling`.
pub fn apply(scheduling: Scheduling) -> std::io::Result<()> {
    // Both policies take priority 0.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call on the calling thread (pid 0) that reads the
    // parameter through a pointer to a live local.
    let rc = unsafe { libc::sched_setscheduler(0, policy(scheduling), &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// [`apply`], logging instead of failing: a service whose policy cannot be
/// set (a seccomp filter without `sched_setscheduler`) still serves, only
/// with the kernel's default.
pub fn apply_or_warn(scheduling: Scheduling) {
    match apply(scheduling) {
        Ok(()) => tracing::debug!(?scheduling, "CPU scheduling policy set"),
        Err(e) => tracing::warn!(
            ?scheduling,
            error = %e,
            "cannot set the CPU scheduling policy; running with the default"
        ),
    }
}

/// The calling thread's policy as `Scheduling`, `None` for any other.
pub fn current() -> Option<Scheduling> {
    of_thread(0)
}

/// The policy of thread `tid` (any process's; 0: the calling thread) as
/// `Scheduling`, `None` for any other policy or a thread that is gone.
pub fn of_thread(tid: libc::pid_t) -> Option<Scheduling> {
    // SAFETY: a plain system call, no pointers.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    Scheduling::ALL
        .into_iter()
        .find(|s| self::policy(*s) == policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_started_after_apply_inherit_the_policy() {
        // On a thread of its own, so the test harness's threads keep theirs.
        let seen = std::thread::spawn(|| {
            apply(Scheduling::Batch).unwrap();
            let child = std::thread::spawn(current).join().unwrap();
            let mine = current();
            apply(Scheduling::Normal).unwrap();
            (mine, child, current())
        })
        .join()
        .unwrap();
        assert_eq!(seen.0, Some(Scheduling::Batch));
        assert_eq!(seen.1, Some(Scheduling::Batch));
        assert_eq!(seen.2, Some(Scheduling::Normal));
    }
}
