-- wrk script for `make bench`: requests as many users, each with its own token and tasks.
-- SCENARIO (env): list | get | create | keyed-create | toggle | mixed. keyed-create sends each
-- create with its own Idempotency-Key (the cost of a safe retry, paid on every first send). USERS_FILE and WRITERS_FILE (env): lines
-- of "<user_id> <token> <task_id>,<task_id>,..." written by bench/_throughput.py. Creates go to
-- the writers, so the readers' lists keep their 20 tasks for the whole run.

local scenario = os.getenv("SCENARIO") or "mixed"

local function load(path)
  local users = {}
  for line in io.lines(path) do
    local id, token, ids = line:match("^(%S+) (%S+) (%S+)$")
    local tasks = {}
    for task in ids:gmatch("[^,]+") do tasks[#tasks + 1] = task end
    users[#users + 1] = {
      base = "/api/" .. id .. "/tasks",
      headers = { ["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json" },
      tasks = tasks,
    }
  end
  return users
end

local users = load(os.getenv("USERS_FILE"))
local writers = load(os.getenv("WRITERS_FILE") or os.getenv("USERS_FILE"))

local body = '{"title": "benchmark task", "description": "written by wrk"}'

local function one(kind)
  local user = users[math.random(#users)]
  if kind == "list" then
    return wrk.format("GET", user.base, user.headers)
  elseif kind == "get" then
    return wrk.format("GET", user.base .. "/" .. user.tasks[math.random(#user.tasks)], user.headers)
  elseif kind == "toggle" then
    local path = user.base .. "/" .. user.tasks[math.random(#user.tasks)] .. "/complete"
    return wrk.format("PATCH", path, user.headers)
  elseif kind == "keyed-create" then
    local writer = writers[math.random(#writers)]
    sent = sent + 1
    local headers = { ["Idempotency-Key"] = key_prefix .. "-" .. sent }
    for name, value in pairs(writer.headers) do headers[name] = value end
    return wrk.format("POST", writer.base, headers, body)
  else
    local writer = writers[math.random(#writers)]
    return wrk.format("POST", writer.base, writer.headers, body)
  end
end

-- A web client's mix: mostly reading its list, then opening, ticking off and adding tasks.
local mix = { "list", "list", "list", "list", "list", "get", "get", "toggle", "toggle", "create" }

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 1000)
  key_prefix = string.format("%d-%d", os.time(), math.random(1e9))  -- unique across runs
  sent = 0
end

function request()
  if scenario == "mixed" then return one(mix[math.random(#mix)]) end
  return one(scenario)
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, ' ..
    '"non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    errors.status,
    errors.connect + errors.read + errors.write + errors.timeout))
end
