//! The `trackdelivery.walk` command: the walk's reads answered from the keyspace through the module key
//! API (no command dispatch, no reply parsing per read), and its reply in the Lua script's shape.

use std::ffi::{c_char, c_int, c_longlong, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::api::{self, api, CommandFn, Ctx, Key, RString, User};
use crate::walk::{walk, Request, Store};

struct KeySpace {
    ctx: *mut Ctx,
    /// the calling connection's ACL user: a script's reads are checked against its key patterns, and
    /// so are these
    user: *mut User,
    /// the first key the user may not read; the walk's reply is then an error
    denied: Option<Vec<u8>>,
}

/// What the walks have read since Redis loaded the module (`TRACKDELIVERY.STATS`): the same reads the
/// script would have made as commands, which `INFO commandstats` cannot see here.
struct Counters {
    walks: AtomicU64,
    range_reads: AtomicU64,
    lex_counts: AtomicU64,
    member_checks: AtomicU64,
    hash_reads: AtomicU64,
}

static COUNTERS: Counters = Counters {
    walks: AtomicU64::new(0),
    range_reads: AtomicU64::new(0),
    lex_counts: AtomicU64::new(0),
    member_checks: AtomicU64::new(0),
    hash_reads: AtomicU64::new(0),
};

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A Redis string made from `bytes`, freed on drop.
struct Text {
    ctx: *mut Ctx,
    raw: *mut RString,
}

impl Text {
    fn new(ctx: *mut Ctx, bytes: &[u8]) -> Text {
        // SAFETY: ctx is the command's context; Redis copies the bytes
        let raw = unsafe { (api().create_string)(ctx, bytes.as_ptr() as *const c_char, bytes.len()) };
        Text { ctx, raw }
    }
}

impl Drop for Text {
    fn drop(&mut self) {
        // SAFETY: made by create_string in this context, freed once
        unsafe { (api().free_string)(self.ctx, self.raw) }
    }
}

/// An open key, closed on drop; `None` when the key does not exist or holds another type.
struct OpenKey {
    key: *mut Key,
    _name: Text,
}

impl OpenKey {
    fn open(ctx: *mut Ctx, name: Text, key_type: c_int) -> Option<OpenKey> {
        // SAFETY: a read-only handle, closed on drop before the name is freed
        let key = unsafe { (api().open_key)(ctx, name.raw, api::READ) };
        let opened = OpenKey { key, _name: name };
        if key.is_null() || unsafe { (api().key_type)(key) } != key_type {
            return None;
        }
        Some(opened)
    }
}

impl Drop for OpenKey {
    fn drop(&mut self) {
        if !self.key.is_null() {
            // SAFETY: opened by open_key, closed once
            unsafe { (api().close_key)(self.key) }
        }
    }
}

/// The bytes of a Redis string, copied.
fn bytes_of(raw: *const RString) -> Vec<u8> {
    let mut length = 0usize;
    // SAFETY: raw is a live Redis string; the pointer is valid for `length` bytes while it lives
    unsafe {
        let pointer = (api().string_ptr_len)(raw, &mut length);
        std::slice::from_raw_parts(pointer as *const u8, length).to_vec()
    }
}

impl KeySpace {
    /// The key as a Redis string, if the user may read it.
    fn permitted(&mut self, key: &[u8]) -> Option<Text> {
        let name = Text::new(self.ctx, key);
        // SAFETY: a live user and key name
        let status = unsafe { (api().acl_check_key_permissions)(self.user, name.raw, api::KEY_ACCESS) };
        if status != api::OK {
            self.denied.get_or_insert_with(|| key.to_vec());
            return None;
        }
        Some(name)
    }

    fn open(&mut self, key: &[u8], key_type: c_int) -> Option<OpenKey> {
        let name = self.permitted(key)?;
        OpenKey::open(self.ctx, name, key_type)
    }

    /// The members of the range the iterator was set up on, moving with `step`, at most `limit`.
    fn collect(
        &self,
        key: &OpenKey,
        step: unsafe extern "C" fn(*mut Key) -> c_int,
        limit: Option<usize>,
    ) -> Vec<Vec<u8>> {
        let api = api();
        let mut members = Vec::new();
        // SAFETY: the key holds a zset with an iterator set up; each element is freed after copying
        unsafe {
            while (api.zset_range_end_reached)(key.key) == 0 && limit.is_none_or(|limit| members.len() < limit) {
                let element = (api.zset_range_current_element)(key.key, null_mut());
                if element.is_null() {
                    break;
                }
                members.push(bytes_of(element));
                (api.free_string)(self.ctx, element);
                if step(key.key) == 0 {
                    break;
                }
            }
            (api.zset_range_stop)(key.key);
        }
        members
    }

    fn lex_range(&mut self, key: &[u8], min: &[u8], max: &[u8], last: bool) -> Option<OpenKey> {
        let key = self.open(key, api::KEYTYPE_ZSET)?;
        let (min, max) = (Text::new(self.ctx, min), Text::new(self.ctx, max));
        let api = api();
        let seek = if last { api.zset_last_in_lex_range } else { api.zset_first_in_lex_range };
        // SAFETY: a zset key and two live range strings
        if unsafe { seek(key.key, min.raw, max.raw) } != api::OK {
            return None;
        }
        Some(key)
    }

    fn call_string(&mut self, command: &std::ffi::CStr, key: &[u8], range: Option<(i64, i64)>) -> Option<Vec<u8>> {
        self.permitted(key)?;
        let api = api();
        // SAFETY: the format names exactly the arguments passed; the reply is freed after copying
        unsafe {
            let reply = match range {
                None => (api.call)(self.ctx, command.as_ptr(), c"b".as_ptr(), key.as_ptr(), key.len()),
                Some((start, end)) => (api.call)(
                    self.ctx,
                    command.as_ptr(),
                    c"bll".as_ptr(),
                    key.as_ptr(),
                    key.len(),
                    start as c_longlong,
                    end as c_longlong,
                ),
            };
            if reply.is_null() {
                return None;
            }
            let mut length = 0usize;
            let pointer = (api.call_reply_string_ptr)(reply, &mut length);
            let value = if pointer.is_null() {
                None
            } else {
                Some(std::slice::from_raw_parts(pointer as *const u8, length).to_vec())
            };
            (api.free_call_reply)(reply);
            value
        }
    }
}

impl Store for KeySpace {
    fn rev_range(&mut self, key: &[u8], max: &[u8], min: &[u8], limit: Option<usize>) -> Vec<Vec<u8>> {
        count(&COUNTERS.range_reads);
        match self.lex_range(key, min, max, true) {
            Some(open) => self.collect(&open, api().zset_range_prev, limit),
            None => Vec::new(),
        }
    }

    fn any_in_range(&mut self, key: &[u8], min: &[u8], max: &[u8]) -> bool {
        count(&COUNTERS.range_reads);
        match self.lex_range(key, min, max, false) {
            Some(open) => !self.collect(&open, api().zset_range_next, Some(1)).is_empty(),
            None => false,
        }
    }

    fn lex_count(&mut self, key: &[u8], min: &[u8], max: &[u8]) -> usize {
        count(&COUNTERS.lex_counts);
        match self.lex_range(key, min, max, false) {
            Some(open) => self.collect(&open, api().zset_range_next, None).len(),
            None => 0,
        }
    }

    fn has_member(&mut self, key: &[u8], member: &[u8]) -> bool {
        count(&COUNTERS.member_checks);
        let Some(key) = self.open(key, api::KEYTYPE_ZSET) else { return false };
        let member = Text::new(self.ctx, member);
        let mut score = 0.0;
        // SAFETY: a zset key and a live member string
        unsafe { (api().zset_score)(key.key, member.raw, &mut score) == api::OK }
    }

    fn score_range(&mut self, key: &[u8], min: f64, max: f64) -> Vec<Vec<u8>> {
        let Some(open) = self.open(key, api::KEYTYPE_ZSET) else { return Vec::new() };
        // SAFETY: a zset key
        if unsafe { (api().zset_first_in_score_range)(open.key, min, max, 0, 0) } != api::OK {
            return Vec::new();
        }
        self.collect(&open, api().zset_range_next, None)
    }

    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.call_string(c"GET", key, None)
    }

    fn get_range(&mut self, key: &[u8], start: i64, end: i64) -> Vec<u8> {
        self.call_string(c"GETRANGE", key, Some((start, end))).unwrap_or_default()
    }

    fn hash_get(&mut self, key: &[u8], fields: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        count(&COUNTERS.hash_reads);
        let Some(open) = self.open(key, api::KEYTYPE_HASH) else { return vec![None; fields.len()] };
        let api = api();
        fields
            .iter()
            .map(|field| {
                let name = Text::new(self.ctx, field);
                let mut value: *mut RString = null_mut();
                // SAFETY: a hash key, one field and its out-pointer, then the terminating NULL
                unsafe {
                    (api.hash_get)(
                        open.key,
                        api::HASH_NONE,
                        name.raw,
                        &mut value as *mut *mut RString,
                        null_mut::<c_void>(),
                    );
                    if value.is_null() {
                        None
                    } else {
                        let bytes = bytes_of(value);
                        (api.free_string)(self.ctx, value);
                        Some(bytes)
                    }
                }
            })
            .collect()
    }
}

unsafe fn reply_bytes(ctx: *mut Ctx, bytes: &[u8]) {
    (api().reply_with_string_buffer)(ctx, bytes.as_ptr() as *const c_char, bytes.len());
}

/// `TRACKDELIVERY.WALK <the script's ARGV>`
unsafe extern "C" fn walk_command(ctx: *mut Ctx, argv: *mut *mut RString, argc: c_int) -> c_int {
    let api = api();
    let arguments: Vec<Vec<u8>> = (1..argc.max(1) as usize).map(|index| bytes_of(*argv.add(index))).collect();
    let items: Vec<&[u8]> = arguments.iter().map(Vec::as_slice).collect();
    let mut request = match Request::parse(&items) {
        Ok(request) => request,
        Err(message) => {
            let text = std::ffi::CString::new(format!("ERR trackdelivery.walk: {message}").replace('\0', " "))
                .unwrap_or_default();
            (api.reply_with_error)(ctx, text.as_ptr());
            return api::OK;
        }
    };
    count(&COUNTERS.walks);
    let user_name = (api.get_current_user_name)(ctx);
    let user = if user_name.is_null() { null_mut() } else { (api.get_module_user_from_user_name)(user_name) };
    if !user_name.is_null() {
        (api.free_string)(ctx, user_name);
    }
    if user.is_null() {
        (api.reply_with_error)(ctx, c"ERR trackdelivery.walk: the connection's ACL user is unknown".as_ptr());
        return api::OK;
    }
    let mut keys = KeySpace { ctx, user, denied: None };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| walk(&mut request, &mut keys)));
    (api.free_module_user)(user);
    let Ok(reply) = outcome else {
        (api.reply_with_error)(ctx, c"ERR trackdelivery.walk failed (see the Redis log)".as_ptr());
        return api::OK;
    };
    if keys.denied.is_some() {
        (api.reply_with_error)(ctx, c"NOPERM this user has no permissions to read a key of the walk".as_ptr());
        return api::OK;
    }
    (api.reply_with_array)(ctx, (3 + 4 * reply.candidates.len()) as _);
    (api.reply_with_long_long)(ctx, c_longlong::from(reply.complete));
    (api.reply_with_long_long)(ctx, reply.scanned);
    (api.reply_with_long_long)(ctx, reply.resume);
    for candidate in &reply.candidates {
        (api.reply_with_long_long)(ctx, candidate.ms);
        reply_bytes(ctx, &candidate.reference);
        match &candidate.arrival {
            Some(arrival) => reply_bytes(ctx, arrival),
            None => {
                (api.reply_with_null)(ctx);
            }
        }
        reply_bytes(ctx, &candidate.record);
    }
    api::OK
}

/// `TRACKDELIVERY.STATS`: name, value, ... of the counters.
unsafe extern "C" fn stats_command(ctx: *mut Ctx, _argv: *mut *mut RString, _argc: c_int) -> c_int {
    let api = api();
    let counters = [
        (c"walks".to_bytes(), &COUNTERS.walks),
        (c"range_reads".to_bytes(), &COUNTERS.range_reads),
        (c"lex_counts".to_bytes(), &COUNTERS.lex_counts),
        (c"member_checks".to_bytes(), &COUNTERS.member_checks),
        (c"hash_reads".to_bytes(), &COUNTERS.hash_reads),
    ];
    (api.reply_with_array)(ctx, (2 * counters.len()) as _);
    for (name, counter) in counters {
        reply_bytes(ctx, name);
        (api.reply_with_long_long)(ctx, counter.load(Ordering::Relaxed) as c_longlong);
    }
    api::OK
}

pub const MODULE_NAME: &std::ffi::CStr = c"trackdelivery";
pub const MODULE_VERSION: c_int = 1;

/// Registers the module and its command.
///
/// # Safety
/// Called by Redis with the loading context.
pub unsafe fn load(ctx: *mut Ctx) -> c_int {
    let Ok(api) = api::load(ctx) else { return api::ERR };
    if (api.is_module_name_busy)(MODULE_NAME.as_ptr()) != 0 {
        return api::ERR;
    }
    (api.set_module_attribs)(ctx, MODULE_NAME.as_ptr(), MODULE_VERSION, api::APIVER_1);
    let walk: CommandFn = walk_command;
    let stats: CommandFn = stats_command;
    if (api.create_command)(ctx, c"trackdelivery.walk".as_ptr(), walk, c"readonly".as_ptr(), 0, 0, 0) != api::OK {
        return api::ERR;
    }
    (api.create_command)(ctx, c"trackdelivery.stats".as_ptr(), stats, c"readonly fast".as_ptr(), 0, 0, 0)
}
