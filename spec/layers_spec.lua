-- scripts/check-layers, the layer rule of runtime/: run against small source
-- trees that each spec writes and compiles itself (the objects named and placed
-- as meson does), so that what it finds does not depend on the real runtime;
-- and, last, against the real runtime and its build (scripts/test's gate: an
-- upward call fails the suite).
local proc = require "spec.support.proc"

local q = proc.quote
local checker = proc.root .. "/scripts/check-layers"
local uniq = tostring(os.time()) .. "-" .. tostring(math.random(1e6))
local seq = 0

-- Writes files = { ["base/fs_a.c"] = text, ... } under a fresh DIR/runtime/,
-- compiles every .c into DIR/build/libfstream.a.p/ (runtime/base/fs_a.c ->
-- runtime_base_fs_a.c.o, as meson names it) unless it is listed in `unbuilt`,
-- and runs the checker on it: output, exit code.
local function check(files, unbuilt)
  seq = seq + 1
  local dir = string.format("%s/layers-%s-%d", proc.tmp, uniq, seq)
  local objdir = dir .. "/build/libfstream.a.p"
  assert(os.execute("mkdir -p " .. q(objdir)))
  local dirs, sources = {}, {}
  for path, text in pairs(files) do
    local sub = path:match("^(.*)/[^/]*$")
    local d = dir .. "/runtime" .. (sub and "/" .. sub or "")
    if not dirs[d] then
      dirs[d] = true
      assert(os.execute("mkdir -p " .. q(d)))
    end
    proc.write(dir .. "/runtime/" .. path, text)
    if path:match("%.c$") and not (unbuilt and unbuilt[path]) then sources[#sources + 1] = path end
  end
  local incs = {}
  for d in pairs(dirs) do incs[#incs + 1] = "-I" .. q(d) end
  for _, path in ipairs(sources) do
    local obj = objdir .. "/" .. ("runtime/" .. path):gsub("/", "_") .. ".o"
    local out, rc = proc.run(string.format("cc -std=gnu11 -Wall -Werror -c %s -o %s %s",
      table.concat(incs, " "), q(obj), q(dir .. "/runtime/" .. path)))
    assert(rc == 0, path .. ": " .. out)
  end
  return proc.run(string.format("%s --root %s %s", q(checker), q(dir), q(dir .. "/build")))
end

-- A clean tree: base <- core <- app, each calling and including only below.
local function clean_tree()
  return {
    ["base/fs_a.h"] = "int fs_a_twice(int x);\n",
    ["base/fs_a.c"] = '#include "fs_a.h"\nint fs_a_twice(int x) { return 2 * x; }\n',
    ["core/fs_b.h"] = "int fs_b_run(void);\n",
    ["core/fs_b.c"] = '#include "fs_a.h"\n#include "fs_b.h"\nint fs_b_run(void) { return fs_a_twice(21); }\n',
    ["app/main.c"] = '#include "fs_b.h"\nint main(void) { return fs_b_run() == 42 ? 0 : 1; }\n',
  }
end

describe("scripts/check-layers", function()
  it("passes a tree whose files include and call their own layer or lower ones", function()
    local out, rc = check(clean_tree())
    assert.are.equal(0, rc, out)
    assert.matches("^check%-layers: ok %(5 files in 3 layers, 3 objects%)\n$", out)
  end)

  it("fails on a lower layer calling an upper layer's function, naming both files and layers", function()
    local files = clean_tree()
    -- declared by hand, not included: only the object's symbols show the call
    files["base/fs_a.c"] = '#include "fs_a.h"\nint fs_b_run(void);\n'
      .. "int fs_a_twice(int x) { return x > 0 ? 2 * x : fs_b_run(); }\n"
    local out, rc = check(files)
    assert.are.equal(1, rc, out)
    assert.truthy(out:find("runtime/base/fs_a.c: calls fs_b_run (defined in runtime/core/fs_b.c, "
      .. "layer core above layer base)\n", 1, true), out)
    -- the two call each other: a cycle too
    assert.truthy(out:find("cycle between runtime/base/fs_a, runtime/core/fs_b: ", 1, true), out)
    assert.matches("check%-layers: 2 violations\n$", out)
  end)

  it("fails on a lower layer including an upper layer's header", function()
    local files = clean_tree()
    files["base/fs_a.c"] = '#include "fs_a.h"\n#include "fs_b.h"\nint fs_a_twice(int x) { return 2 * x; }\n'
    local out, rc = check(files)
    assert.are.equal(1, rc, out)
    assert.truthy(out:find("runtime/base/fs_a.c: includes fs_b.h (runtime/core/fs_b.h, layer core above layer base)\n",
      1, true), out)
  end)

  it("reports a cycle between files of one layer", function()
    local files = clean_tree()
    files["core/fs_x.h"] = "int fs_x_f(int n);\n"
    files["core/fs_y.h"] = "int fs_y_f(int n);\n"
    files["core/fs_x.c"] = '#include "fs_x.h"\n#include "fs_y.h"\nint fs_x_f(int n) { return n ? fs_y_f(n - 1) : 0; }\n'
    -- fs_y.c calls back without including fs_x.h: the call alone closes the circle
    files["core/fs_y.c"] = '#include "fs_y.h"\nint fs_x_f(int n);\nint fs_y_f(int n) { return n ? fs_x_f(n - 1) : 1; }\n'
    local out, rc = check(files)
    assert.are.equal(1, rc, out)
    assert.are.equal("cycle between runtime/core/fs_x, runtime/core/fs_y: runtime/core/fs_x.c includes fs_y.h; "
      .. "runtime/core/fs_y.c calls fs_x_f\ncheck-layers: 1 violation\n", out)
  end)

  it("reports a runtime file outside the layer folders, and a source with no object", function()
    local files = clean_tree()
    files["fs_flat.c"] = "int fs_flat(void) { return 0; }\n"
    files["state/fs_s.c"] = "int fs_s(void) { return 0; }\n"
    local out, rc = check(files, { ["state/fs_s.c"] = true })
    assert.are.equal(1, rc, out)
    assert.truthy(out:find("runtime/fs_flat.c: not in a layer folder", 1, true), out)
    assert.truthy(out:find("runtime/state/fs_s.c: no object file in ", 1, true), out)
  end)

  it("finds the real runtime layered: no upward include or call, no cycle, every file in a layer", function()
    local out = proc.run(string.format("%s %s 2>&1; echo \"rc=$?\"", q(checker),
      q(os.getenv("FSTREAM_BUILD") or proc.root .. "/build")))
    assert.is_nil(out:find("no object file", 1, true), out)
    assert.truthy(out:find("check-layers: ok", 1, true), out)
    assert.truthy(out:find("rc=0", 1, true), out)
  end)
end)
