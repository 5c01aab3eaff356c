-- wrk script for CloudEvents batches of a file's lines, beside trellis-batch-publish in
-- bench/connect.sh:
--   wrk -t2 -c4 -d10s -s bench/wrk-batch.lua http://127.0.0.1:PORT/v1/topics/t/events -- FILE 500
-- Each request is a batch (`application/cloudevents-batch+json`) of BATCH events whose data are
-- the file's lines in turn (the first MAX_LINES of them, over and over), each with a unique id.
-- The lines must need no escaping in JSON (bench/connect.sh writes letters and digits). Each
-- wrk thread runs this script in a Lua state of its own: `setup` (in the main state) hands each
-- one its number and the run's id as globals, which `init` and `request` read as globals.
local threads = 0
local MAX_LINES = 20000
math.randomseed(os.time())
local this_run = string.format("%d-%d", os.time(), math.random(1, 1000000000))

function setup(thread)
  thread:set("thread_id", threads)
  thread:set("run_id", this_run)
  threads = threads + 1
end

function init(args)
  lines = {}
  for line in io.lines(args[1]) do
    lines[#lines + 1] = line
    if #lines >= MAX_LINES then break end
  end
  batch = tonumber(args[2]) or 500
  counter = 0
  wrk.method = "POST"
  wrk.headers["content-type"] = "application/cloudevents-batch+json"
  attributes = '"specversion":"1.0","source":"/trellis/bench/wrk","type":"dev.trellis.bench.line",'
    .. '"datacontenttype":"text/plain; charset=utf-8"'
end

function request()
  local parts = {}
  for i = 1, batch do
    counter = counter + 1
    parts[i] = string.format('{"id":"wrk-%s-%d-%d",%s,"data":"%s"}', run_id, thread_id, counter,
      attributes, lines[(counter - 1) % #lines + 1])
  end
  return wrk.format(nil, nil, nil, "[" .. table.concat(parts, ",") .. "]")
end
