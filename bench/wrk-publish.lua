-- wrk script for durable binary-mode publishing, beside trellis-loadgen in bench/publish.sh:
--   wrk -t2 -c64 -d10s --latency -s bench/wrk-publish.lua http://127.0.0.1:PORT/v1/topics/t/events
-- Every request carries a unique ce-id, so deduplication stores each one. Each wrk thread runs
-- this script in a Lua state of its own: `setup` (in the main state) hands each one its number
-- and the run's id as globals, which `request` must read as globals (a `local` of the same name
-- would give every thread the same ids, and half the requests would be duplicates). The run id
-- (start time and a random number) keeps a warm-up run and the measured run after it apart.
-- With WRK_ADDRS=HOST:PORT,HOST:PORT,... in the environment (bench/cluster.sh), thread i sends
-- to the i-th of those servers (modulo their number) instead of the URL's host: run as many
-- threads as servers, or a multiple, to spread the load evenly over them.
local counter = 0
local threads = 0
math.randomseed(os.time())
local this_run = string.format("%d-%d", os.time(), math.random(1, 1000000000))

local servers = {}
for server in string.gmatch(os.getenv("WRK_ADDRS") or "", "[^,]+") do
  local host, port = string.match(server, "^(.+):(%d+)$")
  if host then
    servers[#servers + 1] = wrk.lookup(host, port)[1]
  end
end

function setup(thread)
  if #servers > 0 then
    thread.addr = servers[threads % #servers + 1]
  end
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
