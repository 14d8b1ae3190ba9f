-- wrk script for bench/ingest: POST pre-signed, distinct HealthDock events and count what the
-- server answered, so a run that is fast because it answers 401 or 503 is seen for what it is.
--
--   wrk -t1 -c32 -d10s --latency -s post_events.lua http://127.0.0.1:8150/webhooks/healthdock \
--       -- EVENTS_FILE THREADS [START [READY]]
--
-- EVENTS_FILE  lines "signature<TAB>body" written by bench/ingest/events.py
-- THREADS      the same number as wrk's -t: each thread sends its own share of the file
--              (line START+k*THREADS+thread_index), so no two threads send the same event
-- START        first line to use; the runner passes the warm-up's next_start so the measured
--              run never repeats an event the warm-up already stored
-- READY        if given, each thread creates READY.<thread index> once its share is loaded:
--              the runner reads the machine's CPU counters then, so that the seconds wrk
--              spends reading the file (before its clock starts) are not counted as the run's
--
-- done() prints one line "BENCH_RESULT {json}" for the runner to parse.

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
sent = 0         -- request() calls: events handed to a connection (a few are still in flight at the end)
ok = 0           -- 2xx responses: events the server acknowledged
non2xx = 0
by_status = {}   -- non-2xx count by status code
first_error = "" -- status and start of the body of the first non-2xx, for diagnosis
wrapped = 0      -- times this thread ran out of events and started again: duplicates were sent
start = 0
thread_count = 1

function init(args)
   local path = args[1]
   thread_count = tonumber(args[2] or "1")
   start = tonumber(args[3] or "0")
   assert(path, "usage: -- EVENTS_FILE THREADS [START [READY]]")
   local file = assert(io.open(path, "r"))
   local line_number = 0
   for line in file:lines() do
      local offset = line_number - start
      if offset >= 0 and offset % thread_count == thread_index then
         local tab = line:find("\t", 1, true)
         local headers = {
            ["Content-Type"] = "application/json",
            ["X-HealthDock-Signature"] = line:sub(1, tab - 1),
         }
         -- Formatted once here, so request() costs a table lookup and wrk measures the server.
         requests[#requests + 1] = wrk.format("POST", nil, headers, line:sub(tab + 1))
      end
      line_number = line_number + 1
   end
   file:close()
   assert(#requests > 0, "no events for this thread: EVENTS_FILE too short for START")
   if args[4] then
      assert(io.open(args[4] .. "." .. thread_index, "w")):close()
   end
end

function request()
   cursor = cursor + 1
   if cursor > #requests then
      -- Reported, never hidden: the runner marks such a run as invalid (deduplicated repeats).
      cursor = 1
      wrapped = wrapped + 1
   end
   sent = sent + 1
   return requests[cursor]
end

function response(status, headers, body)
   if status >= 200 and status < 300 then
      ok = ok + 1
      return
   end
   non2xx = non2xx + 1
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
   local totals = { sent = 0, ok = 0, non2xx = 0, wrapped = 0 }
   local statuses = {}
   local most_sent = 0
   local first_start, count, first_error_seen = 0, #threads, ""
   for _, thread in ipairs(threads) do
      local thread_sent = thread:get("sent")
      totals.sent = totals.sent + thread_sent
      totals.ok = totals.ok + thread:get("ok")
      totals.non2xx = totals.non2xx + thread:get("non2xx")
      totals.wrapped = totals.wrapped + thread:get("wrapped")
      if thread_sent > most_sent then
         most_sent = thread_sent
      end
      first_start = thread:get("start")
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
      string.format('"ok":%d,"non2xx":%d,"statuses":{%s},"first_error":%s,', totals.ok,
         totals.non2xx, table.concat(status_parts, ","), json_string(first_error_seen)),
      string.format('"sent":%d,"wrapped":%d,"start":%d,"next_start":%d,', totals.sent,
         totals.wrapped, first_start, first_start + most_sent * count),
      string.format('"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},',
         errors.connect, errors.read, errors.write, errors.timeout),
      string.format('"bytes_read":%d', summary.bytes),
      "}\n")
end
