//! The Lua scripts behind `only_newer`: Redis compares the stored event time with the
//! reading's and writes only if the reading is not older, in one atomic step, so two weir
//! instances (or a retry racing a newer reading) cannot interleave between read and write.
//!
//! Both return 1 when they wrote and 0 when they kept the stored, newer document. They are
//! sent with EVALSHA inside the batch's pipeline; after a Redis restart (empty script cache)
//! the sink loads them again and retries (see `NOSCRIPT` in `super::outcome`).

use std::sync::LazyLock;

/// `hash` mode. KEYS[1]: the document. ARGV[1]: the reading's event time (epoch ms);
/// ARGV[2]: TTL in ms, 0 for none; ARGV[3..]: field, value, field, value, ...
/// The pairs include `event_time_ms`, which is what the next reading is compared with.
pub static HASH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local stored = tonumber(redis.call('HGET', KEYS[1], 'event_time_ms'))
if stored and stored > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if tonumber(ARGV[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
",
    )
});

/// `json` mode. KEYS[1]: the document. ARGV[1]: the reading's event time (epoch ms);
/// ARGV[2]: TTL in ms, 0 for none; ARGV[3]: the JSON document. The sink writes every
/// document with `event_time_ms` as its first member, so the stored time is read with an
/// anchored pattern instead of decoding the whole document; a value that does not start
/// that way (written by something else) is overwritten.
pub static JSON: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if current then
  local stored = tonumber(string.match(current, '^{"event_time_ms":(%-?%d+)[,}]'))
  if stored and stored > tonumber(ARGV[1]) then
    return 0
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
"#,
    )
});
