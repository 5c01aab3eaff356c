-- wrk script for durable binary-mode publishing, beside trellis-loadgen in bench/publish.sh:
--   wrk -t2 -c64 -d10s --latency -s bench/wrk-publish.lua http://127.0.0.1:PORT/v1/topics/t/events
-- Every request carries a unique ce-id, so deduplication stores each one.
local counter = 0
local thread_id = 0

function setup(thread)
  thread:set("thread_id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  wrk.method = "POST"
  wrk.body = string.rep("x", 1024)
  wrk.headers["ce-specversion"] = "1.0"
  wrk.headers["ce-type"] = "dev.trellis.bench.publish"
  wrk.headers["ce-source"] = "/trellis/bench/wrk"
  wrk.headers["content-type"] = "application/octet-stream"
end

function request()
  counter = counter + 1
  wrk.headers["ce-id"] = string.format("wrk-%d-%d", thread_id, counter)
  return wrk.format()
end
