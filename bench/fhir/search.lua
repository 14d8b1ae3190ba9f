-- wrk script for bench/fhir: GET a file of FHIR request paths over and over, with a bearer
-- token, and count what the server answered, so a run that is fast because it answers 401,
-- 400 or 503 (or finds nothing) is seen for what it is.
--
--   FHIR_BENCH_TOKEN=... wrk -t1 -c4 -d5s --latency -s search.lua http://127.0.0.1:8160 \
--       -- PATHS_FILE THREADS
--
-- PATHS_FILE  one request path a line ("/fhir/Patient?family=Sha"), already URL-encoded
-- THREADS     the same number as wrk's -t: each thread cycles through its own share of the
--             file (line k*THREADS+thread_index), so the threads do not move in lock-step
--
-- The token comes from the environment rather than the command line, which the runner
-- prints and records. done() prints one line "BENCH_RESULT {json}" for the runner to parse.

-- Main Lua state: the threads, kept so done() can read their counters.
local threads = {}

function setup(thread)
   -- setup() runs for each thread before that thread's init(), so the index is known there.
   thread:set("thread_index", #threads)
   threads[#threads + 1] = thread
end

-- Per-thread state (each wrk thread has its own Lua state). Globals below are read by done()
-- through thread:get, which only sees globals.
local requests = {}
local cursor = 0
paths = 0        -- paths this thread cycles through
sent = 0         -- request() calls
ok = 0           -- 200 responses
non200 = 0       -- anything else: the runner fails the run
by_status = {}   -- non-200 count by status code
first_error = "" -- status and start of the body of the first non-200, for diagnosis
empty = 0        -- 200 searchsets without an entry: a search that matched nothing
cycles = 0       -- times this thread went through all its paths

function init(args)
   local path = args[1]
   local thread_count = tonumber(args[2] or "1")
   assert(path, "usage: -- PATHS_FILE THREADS")
   local token = os.getenv("FHIR_BENCH_TOKEN")
   assert(token and token ~= "", "FHIR_BENCH_TOKEN is not set")
   local headers = {
      ["Authorization"] = "Bearer " .. token,
      ["Accept"] = "application/fhir+json",
   }
   local file = assert(io.open(path, "r"))
   local line_number = 0
   for line in file:lines() do
      if line ~= "" then
         if line_number % thread_count == thread_index then
            -- Formatted once here, so request() costs a table lookup and wrk measures the server.
            requests[#requests + 1] = wrk.format("GET", line, headers)
         end
         line_number = line_number + 1
      end
   end
   file:close()
   paths = #requests
   assert(paths > 0, "no paths for this thread: PATHS_FILE has fewer lines than THREADS")
end

function request()
   cursor = cursor + 1
   if cursor > #requests then
      cursor = 1
      cycles = cycles + 1
   end
   sent = sent + 1
   return requests[cursor]
end

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
      -- A searchset that matched nothing has no "entry" (FHIR JSON has no empty arrays);
      -- a read's body never holds the word, so only searches are counted here.
      if string.find(body or "", '"type":"searchset"', 1, true)
         and not string.find(body or "", '"entry":', 1, true) then
         empty = empty + 1
      end
      return
   end
   non200 = non200 + 1
   by_status[status] = (by_status[status] or 0) + 1
   if first_error == "" then
      first_error = status .. " " .. string.sub(body or "", 1, 300)
   end
end

local function json_string(text)
   return '"' .. string.gsub(text, '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end) .. '"'
end

function done(summary, latency, _)
   local totals = { paths = 0, sent = 0, ok = 0, non200 = 0, empty = 0, cycles = 0 }
   local statuses = {}
   local first_error_seen = ""
   for _, thread in ipairs(threads) do
      for name, _ in pairs(totals) do
         totals[name] = totals[name] + thread:get(name)
      end
      for status, n in pairs(thread:get("by_status")) do
         statuses[status] = (statuses[status] or 0) + n
      end
      if first_error_seen == "" then
         first_error_seen = thread:get("first_error")
      end
   end
   local status_parts = {}
   for status, n in pairs(statuses) do
      status_parts[#status_parts + 1] = string.format('"%d":%d', status, n)
   end
   local seconds = summary.duration / 1e6
   local errors = summary.errors
   io.write("BENCH_RESULT {",
      string.format('"requests":%d,"duration_s":%.6f,"requests_per_s":%.2f,', summary.requests,
         seconds, summary.requests / seconds),
      string.format('"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},',
         latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
         latency.mean),
      string.format('"ok":%d,"non200":%d,"statuses":{%s},"first_error":%s,', totals.ok,
         totals.non200, table.concat(status_parts, ","), json_string(first_error_seen)),
      string.format('"paths":%d,"sent":%d,"empty":%d,"cycles":%d,', totals.paths, totals.sent,
         totals.empty, totals.cycles),
      string.format('"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},',
         errors.connect, errors.read, errors.write, errors.timeout),
      string.format('"bytes_read":%d', summary.bytes),
      "}\n")
end
