-- Damages to a table partition's LMDB files, made while no worker runs: the
-- ones spec/store_damage_spec.lua checks and the longer list of
-- chaos/scenarios/damage.lua (issue 15, scenario 5).
local proc = require "spec.support.proc"

local damage = {}
local q = proc.quote

-- Runs cmd; raises with its output when it fails.
function damage.sh(cmd)
  local out, rc = proc.run(cmd)
  assert(rc == 0, cmd .. ": " .. out)
  return out
end

-- A file's size in bytes, or nil when it is not there.
function damage.size(path)
  local out, rc = proc.run("stat -c %s " .. q(path))
  return rc == 0 and tonumber(out:match("%d+")) or nil
end

local function zero_pages(file, n)
  damage.sh(string.format("dd if=/dev/zero of=%s bs=4096 count=%d conv=notrunc 2>&1", q(file), n))
end

-- By name, each applied to a partition's directory (STORE/TABLE/P).
damage.fn = {
  ["data.mdb truncated to half"] = function(dir)
    local f = dir .. "/data.mdb"
    damage.sh(string.format("truncate -s %d %s", damage.size(f) // 2, q(f)))
  end,
  ["header page zeroed"] = function(dir) zero_pages(dir .. "/data.mdb", 1) end,
  ["both meta pages zeroed"] = function(dir) zero_pages(dir .. "/data.mdb", 2) end,
  ["data.mdb emptied"] = function(dir) damage.sh("truncate -s 0 " .. q(dir .. "/data.mdb")) end,
  ["data.mdb deleted"] = function(dir) damage.sh("rm " .. q(dir .. "/data.mdb")) end,
  ["lock.mdb deleted"] = function(dir) damage.sh("rm " .. q(dir .. "/lock.mdb")) end,
  ["lock.mdb garbage"] = function(dir) damage.sh("head -c 8192 /dev/urandom > " .. q(dir .. "/lock.mdb")) end,
  ["both deleted"] = function(dir) damage.sh("rm " .. q(dir .. "/data.mdb") .. " " .. q(dir .. "/lock.mdb")) end,
}

-- The partition of a table (default word_counts, 4 partitions) whose
-- data.mdb is largest: a damage there must hurt (its B-tree spans pages, its
-- root written last is in the file's second half).
function damage.fullest(store, tbl, partitions)
  local best, bsize = 0, -1
  for p = 0, (partitions or 4) - 1 do
    local s = damage.size(string.format("%s/%s/%d/data.mdb", store, tbl or "word_counts", p)) or 0
    if s > bsize then best, bsize = p, s end
  end
  return best
end

return damage
