//! The part of Redis's module API this module calls, looked up by name when Redis loads it (what
//! `RedisModule_Init` in Redis's C header does: the loader passes the lookup function as the first word
//! of the context).

use std::ffi::{c_char, c_int, c_long, c_longlong, c_void, CStr};
use std::sync::OnceLock;

#[repr(C)]
pub struct Ctx {
    _private: [u8; 0],
}

#[repr(C)]
pub struct RString {
    _private: [u8; 0],
}

#[repr(C)]
pub struct Key {
    _private: [u8; 0],
}

#[repr(C)]
pub struct User {
    _private: [u8; 0],
}

#[repr(C)]
pub struct CallReply {
    _private: [u8; 0],
}

pub type CommandFn = unsafe extern "C" fn(*mut Ctx, *mut *mut RString, c_int) -> c_int;

pub const OK: c_int = 0;
pub const ERR: c_int = 1;
pub const APIVER_1: c_int = 1;
pub const READ: c_int = 1;
pub const KEYTYPE_HASH: c_int = 3;
pub const KEYTYPE_ZSET: c_int = 5;
pub const HASH_NONE: c_int = 0;
/// REDISMODULE_CMD_KEY_ACCESS: the key's data is read (returned)
pub const KEY_ACCESS: c_int = 1 << 4;

pub struct Api {
    pub set_module_attribs: unsafe extern "C" fn(*mut Ctx, *const c_char, c_int, c_int),
    pub is_module_name_busy: unsafe extern "C" fn(*const c_char) -> c_int,
    pub create_command:
        unsafe extern "C" fn(*mut Ctx, *const c_char, CommandFn, *const c_char, c_int, c_int, c_int) -> c_int,
    pub string_ptr_len: unsafe extern "C" fn(*const RString, *mut usize) -> *const c_char,
    pub create_string: unsafe extern "C" fn(*mut Ctx, *const c_char, usize) -> *mut RString,
    pub free_string: unsafe extern "C" fn(*mut Ctx, *mut RString),
    pub open_key: unsafe extern "C" fn(*mut Ctx, *mut RString, c_int) -> *mut Key,
    pub close_key: unsafe extern "C" fn(*mut Key),
    pub key_type: unsafe extern "C" fn(*mut Key) -> c_int,
    pub zset_score: unsafe extern "C" fn(*mut Key, *mut RString, *mut f64) -> c_int,
    pub zset_first_in_lex_range: unsafe extern "C" fn(*mut Key, *mut RString, *mut RString) -> c_int,
    pub zset_last_in_lex_range: unsafe extern "C" fn(*mut Key, *mut RString, *mut RString) -> c_int,
    pub zset_first_in_score_range: unsafe extern "C" fn(*mut Key, f64, f64, c_int, c_int) -> c_int,
    pub zset_range_current_element: unsafe extern "C" fn(*mut Key, *mut f64) -> *mut RString,
    pub zset_range_next: unsafe extern "C" fn(*mut Key) -> c_int,
    pub zset_range_prev: unsafe extern "C" fn(*mut Key) -> c_int,
    pub zset_range_end_reached: unsafe extern "C" fn(*mut Key) -> c_int,
    pub zset_range_stop: unsafe extern "C" fn(*mut Key),
    pub hash_get: unsafe extern "C" fn(*mut Key, c_int, ...) -> c_int,
    pub get_current_user_name: unsafe extern "C" fn(*mut Ctx) -> *mut RString,
    pub get_module_user_from_user_name: unsafe extern "C" fn(*mut RString) -> *mut User,
    pub free_module_user: unsafe extern "C" fn(*mut User) -> c_int,
    pub acl_check_key_permissions: unsafe extern "C" fn(*mut User, *mut RString, c_int) -> c_int,
    pub call: unsafe extern "C" fn(*mut Ctx, *const c_char, *const c_char, ...) -> *mut CallReply,
    pub call_reply_string_ptr: unsafe extern "C" fn(*mut CallReply, *mut usize) -> *const c_char,
    pub free_call_reply: unsafe extern "C" fn(*mut CallReply),
    pub reply_with_array: unsafe extern "C" fn(*mut Ctx, c_long) -> c_int,
    pub reply_with_long_long: unsafe extern "C" fn(*mut Ctx, c_longlong) -> c_int,
    pub reply_with_string_buffer: unsafe extern "C" fn(*mut Ctx, *const c_char, usize) -> c_int,
    pub reply_with_null: unsafe extern "C" fn(*mut Ctx) -> c_int,
    pub reply_with_error: unsafe extern "C" fn(*mut Ctx, *const c_char) -> c_int,
}

static API: OnceLock<Api> = OnceLock::new();

/// The API table; only called from commands, which Redis runs after a successful `load`.
pub fn api() -> &'static Api {
    API.get().expect("the module API is loaded before any command runs")
}

type GetApi = unsafe extern "C" fn(*const c_char, *mut c_void) -> c_int;

/// Looks every function up. Err names the first one this Redis lacks.
///
/// # Safety
/// `ctx` is the context Redis passes to `RedisModule_OnLoad`.
// each transmute's target is the type of the `Api` field it fills
#[allow(clippy::missing_transmute_annotations)]
pub unsafe fn load(ctx: *mut Ctx) -> Result<&'static Api, String> {
    let get_api: GetApi = std::mem::transmute::<*const c_void, GetApi>(*(ctx as *const *const c_void));
    let find = |name: &CStr| -> Result<*const c_void, String> {
        let mut pointer: *const c_void = std::ptr::null();
        let status = get_api(name.as_ptr(), &mut pointer as *mut *const c_void as *mut c_void);
        if status != OK || pointer.is_null() {
            return Err(format!("this Redis has no {}", name.to_string_lossy()));
        }
        Ok(pointer)
    };
    macro_rules! function {
        ($name:literal) => {
            std::mem::transmute::<*const c_void, _>(find($name)?)
        };
    }
    let api = Api {
        set_module_attribs: function!(c"RedisModule_SetModuleAttribs"),
        is_module_name_busy: function!(c"RedisModule_IsModuleNameBusy"),
        create_command: function!(c"RedisModule_CreateCommand"),
        string_ptr_len: function!(c"RedisModule_StringPtrLen"),
        create_string: function!(c"RedisModule_CreateString"),
        free_string: function!(c"RedisModule_FreeString"),
        open_key: function!(c"RedisModule_OpenKey"),
        close_key: function!(c"RedisModule_CloseKey"),
        key_type: function!(c"RedisModule_KeyType"),
        zset_score: function!(c"RedisModule_ZsetScore"),
        zset_first_in_lex_range: function!(c"RedisModule_ZsetFirstInLexRange"),
        zset_last_in_lex_range: function!(c"RedisModule_ZsetLastInLexRange"),
        zset_first_in_score_range: function!(c"RedisModule_ZsetFirstInScoreRange"),
        zset_range_current_element: function!(c"RedisModule_ZsetRangeCurrentElement"),
        zset_range_next: function!(c"RedisModule_ZsetRangeNext"),
        zset_range_prev: function!(c"RedisModule_ZsetRangePrev"),
        zset_range_end_reached: function!(c"RedisModule_ZsetRangeEndReached"),
        zset_range_stop: function!(c"RedisModule_ZsetRangeStop"),
        hash_get: function!(c"RedisModule_HashGet"),
        get_current_user_name: function!(c"RedisModule_GetCurrentUserName"),
        get_module_user_from_user_name: function!(c"RedisModule_GetModuleUserFromUserName"),
        free_module_user: function!(c"RedisModule_FreeModuleUser"),
        acl_check_key_permissions: function!(c"RedisModule_ACLCheckKeyPermissions"),
        call: function!(c"RedisModule_Call"),
        call_reply_string_ptr: function!(c"RedisModule_CallReplyStringPtr"),
        free_call_reply: function!(c"RedisModule_FreeCallReply"),
        reply_with_array: function!(c"RedisModule_ReplyWithArray"),
        reply_with_long_long: function!(c"RedisModule_ReplyWithLongLong"),
        reply_with_string_buffer: function!(c"RedisModule_ReplyWithStringBuffer"),
        reply_with_null: function!(c"RedisModule_ReplyWithNull"),
        reply_with_error: function!(c"RedisModule_ReplyWithError"),
    };
    Ok(API.get_or_init(|| api))
}
