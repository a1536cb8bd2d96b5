-- wrk script: one fresh token per request, taken in order from a file per wrk thread.
--
-- Arguments (after `--`): PREFIX MODE [CLIENT_ID CLIENT_SECRET]
--   PREFIX  thread N reads its tokens from PREFIX.N (one per line)
--   MODE    "bearer": GET with `Authorization: Bearer TOKEN` (through Envoy)
--           "form":   POST `token=TOKEN&client_id=..&client_secret=..` (straight to the AS)
--
-- When a thread has used all its tokens it keeps sending its last one (a cache would then
-- hit, so the run no longer measures misses) and counts those requests as `exhausted`;
-- `done` prints `BENCH_TOKENS used=N exhausted=M` for bench/run.py to flag the row.
-- wrk calls request() once before the run in thread 0 to check the script and discards that
-- request, so thread 0's first token is never sent (and `used` counts one more than sent).

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local prefix = args[1]
   mode = args[2]
   tokens = {}
   for line in io.lines(prefix .. "." .. id) do
      if #line > 0 then
         tokens[#tokens + 1] = line
      end
   end
   used = 0
   exhausted = 0
   if mode == "form" then
      headers = { ["Content-Type"] = "application/x-www-form-urlencoded",
                  ["Accept"] = "application/json" }
      suffix = "&client_id=" .. args[3] .. "&client_secret=" .. args[4]
   else
      headers = {}
   end
end

function request()
   local token = tokens[used + 1]
   if token == nil then
      exhausted = exhausted + 1
      token = tokens[#tokens] or "none"
   else
      used = used + 1
   end
   if mode == "form" then
      return wrk.format("POST", nil, headers, "token=" .. token .. suffix)
   end
   headers["Authorization"] = "Bearer " .. token
   return wrk.format("GET", nil, headers)
end

function done(summary, latency, requests)
   local u, e = 0, 0
   for _, thread in ipairs(threads) do
      u = u + (thread:get("used") or 0)
      e = e + (thread:get("exhausted") or 0)
   end
   io.write(string.format("BENCH_TOKENS used=%d exhausted=%d\n", u, e))
end
