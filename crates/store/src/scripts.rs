//! The Lua scripts of `src/lua/`, loaded once (EVALSHA with automatic fallback to EVAL).
//! The queue scripts start with `sched.lua`, the scheduling helpers they share.

use redis::Script;

/// Every script the store runs.
pub(crate) struct Scripts {
    pub submit: Script,
    pub claim: Script,
    pub finish: Script,
    pub cancel: Script,
    pub release: Script,
    pub heartbeat: Script,
    pub reclaim: Script,
    pub retry: Script,
    pub wf_put: Script,
    pub wf_move: Script,
}

impl Scripts {
    pub(crate) fn load() -> Self {
        Scripts {
            submit: Script::new(concat!(
                include_str!("lua/sched.lua"),
                include_str!("lua/submit.lua")
            )),
            claim: Script::new(concat!(
                include_str!("lua/sched.lua"),
                include_str!("lua/claim.lua")
            )),
            finish: Script::new(include_str!("lua/finish.lua")),
            cancel: Script::new(concat!(
                include_str!("lua/sched.lua"),
                include_str!("lua/cancel.lua")
            )),
            release: Script::new(concat!(
                include_str!("lua/sched.lua"),
                include_str!("lua/release.lua")
            )),
            heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
            reclaim: Script::new(concat!(
                include_str!("lua/sched.lua"),
                include_str!("lua/reclaim.lua")
            )),
            retry: Script::new(concat!(
                include_str!("lua/sched.lua"),
                include_str!("lua/retry.lua")
            )),
            wf_put: Script::new(include_str!("lua/wf_put.lua")),
            wf_move: Script::new(include_str!("lua/wf_move.lua")),
        }
    }
}
