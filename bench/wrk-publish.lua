-- wrk script for durable binary-mode publishing, beside trellis-loadgen in bench/publish.sh:
--   wrk -t2 -c64 -d10s --latency -s bench/wrk-publish.lua http://127.0.0.1:PORT/v1/topics/t/events
-- Every request carries a unique ce-id, so deduplication stores each one. Each wrk thread runs
-- this script in a Lua state of its own: `setup` (in the main state) hands each one its number
-- and the run's id as globals, which `request` must read as globals (a `local` of the same name
-- would give every thread the same ids, and half the requests would be duplicates). The run id
-- (start time and a random number) keeps a warm-up run and the measured run after it apart.
local counter = 0
local threads = 0
math.randomseed(os.time())
local this_run = string.format("%d-%d", os.time(), math.random(1, 1000000000))

function setup(thread)
  thread:set("thread_id", threads)
  thread:set("run_id", this_run)
  threads = threads + 1
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
  wrk.headers["ce-id"] = string.format("wrk-%s-%d-%d", run_id, thread_id, counter)
  return wrk.format()
end
