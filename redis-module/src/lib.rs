//! A Redis module for the query service: `TRACKDELIVERY.WALK`, the search walk that
//! `query_service/walk.py` otherwise runs as a Lua script. Same arguments, same reply; it reads the index
//! sets and message hashes through the module key API, which costs a fraction of a Lua `redis.call`.
//!
//! Load it with `loadmodule /path/to/libtrackdelivery_redis.so` (or `MODULE LOAD`); the query service
//! uses it when present and the script otherwise.

mod api;
mod module;
pub mod walk;

/// The entry point Redis calls when it loads the module.
///
/// # Safety
/// Called by Redis with its loading context.
#[no_mangle]
pub unsafe extern "C" fn RedisModule_OnLoad(
    ctx: *mut api::Ctx,
    _argv: *mut *mut api::RString,
    _argc: std::ffi::c_int,
) -> std::ffi::c_int {
    module::load(ctx)
}
