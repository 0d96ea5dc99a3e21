-- Worker "hosts" for network partition tests: network namespaces, each joined
-- by a veth pair to a bridge in the root namespace, so that a Kafka in the
-- root namespace listening on every address and advertising the bridge's
-- address is reached by the hosts and by the checkers alike. A cut disables a
-- host's bridge port (its frames are dropped silently, both ends of the veth
-- stay up): the host sees silence, not an error, as behind a dead switch.
--
-- Root only (ip netns, veth, bridge). Each user picks its own prefix (device
-- and namespace names) and /24 (the bridge is .1, host i is .10+i).
local proc = require "spec.support.proc"

local netns = {}

local function must(cmd)
  local out, rc = proc.run(cmd)
  if rc ~= 0 then error(string.format("%s: exit %s: %s", cmd, tostring(rc), out), 0) end
  return out
end

-- Whether namespaces can be made here (root, and ip works).
function netns.usable()
  local id = proc.run("id -u")
  if not id:match("^%s*0%s*$") then return false, "needs root (ip netns, veth and bridge devices)" end
  local out, rc = proc.run("ip netns list 2>&1")
  if rc ~= 0 or out:match("[Pp]ermission") then return false, "ip netns is not usable: " .. out end
  return true
end

local Net = {}
Net.__index = Net

-- netns.new{prefix = "fsc3", subnet = "10.203.0", hosts = {"h1", "h2"}}
function netns.new(o)
  local n = setmetatable({ prefix = o.prefix, bridge = o.prefix .. "br", bridge_addr = o.subnet .. ".1",
    hosts = {} }, Net)
  for i, name in ipairs(o.hosts) do
    local dev = o.prefix .. name
    assert(#dev + 1 <= 15, "device name too long: " .. dev)
    n.hosts[i] = { name = name, ns = dev, port = dev, peer = dev .. "p", addr = o.subnet .. "." .. (10 + i) }
    n.hosts[name] = n.hosts[i]
  end
  return n
end

-- Removes every device and namespace of this net (a killed run may have left them).
function Net:down()
  for _, h in ipairs(self.hosts) do
    proc.run("ip netns del " .. h.ns .. " 2>/dev/null")
    proc.run("ip link del " .. h.port .. " 2>/dev/null")
  end
  proc.run("ip link del " .. self.bridge .. " 2>/dev/null")
end

function Net:up()
  self:down()
  must(string.format("ip link add %s type bridge && ip addr add %s/24 dev %s && ip link set %s up",
    self.bridge, self.bridge_addr, self.bridge, self.bridge))
  for _, h in ipairs(self.hosts) do
    must(string.format("ip netns add %s && ip link add %s type veth peer name %s && ip link set %s netns %s" ..
      " && ip link set %s master %s up && ip -n %s addr add %s/24 dev %s && ip -n %s link set %s up" ..
      " && ip -n %s link set lo up", h.ns, h.port, h.peer, h.peer, h.ns, h.port, self.bridge, h.ns, h.addr, h.peer,
      h.ns, h.peer, h.ns))
  end
end

-- The cut: the bridge drops every frame of the host's port (STP state
-- "disabled"); its TCP connections hang until their timeouts.
function Net:cut(h) must(string.format("bridge link set dev %s state 0", (self.hosts[h] or h).port)) end
function Net:heal(h) must(string.format("bridge link set dev %s state 3", (self.hosts[h] or h).port)) end

-- The command prefix that runs a command on host h.
function Net:exec(h) return "ip netns exec " .. (self.hosts[h] or h).ns .. " " end

-- scripts/kafka start's --set options for a Kafka on `port` that every host
-- reaches: every address listened on, the bridge's advertised.
function Net:kafka_sets(port)
  return string.format("--set %s --set %s",
    proc.quote("listeners=PLAINTEXT://0.0.0.0:" .. port .. ",CONTROLLER://127.0.0.1:" .. (port + 1)),
    proc.quote("advertised.listeners=PLAINTEXT://" .. self.bridge_addr .. ":" .. port))
end

return netns
