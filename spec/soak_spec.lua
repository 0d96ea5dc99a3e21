-- The soak's own arithmetic (chaos/soak.lua, scripts/soak): it checks
-- millions of numbers without a table per input, so its window model and
-- packed counters are checked here against spec/support/eos.lua's plain
-- versions on a small input; and its plot (chaos/svgplot.lua) breaks lines
-- where the worker was down. The soak itself runs from scripts/soak only.
local soak = require "chaos.soak"
local svgplot = require "chaos.svgplot"
local eos = require "spec.support.eos"

describe("soak", function()
  -- The soak's producer: event time base + (100 n) // rate cs; eos_producer.sh: base + 2n.
  for _, c in ipairs { { a = 2, d = 1, n = 3000 }, { a = 100, d = 500, n = 30000 } } do
    it(string.format("computes the same windows, counts and due set as eos.check_windows (cs = base + %dn/%d)", c.a, c.d),
      function()
        local words, base, n_max = 16, 178000000, c.n
        local parts = { [0] = 2, 1, 3, 0, 2, 2, 1, 0, 3, 3, 1, 0, 2, 1, 0, 3 }
        local inputs, wpart, part_max = {}, {}, {}
        for n = 1, n_max do
          local k = n % words
          inputs[#inputs + 1] = { n = n, w = "w" .. k, cs = base + (c.a * n) // c.d, p = parts[k] }
          wpart[k] = parts[k]
          if (part_max[parts[k]] or 0) < n then part_max[parts[k]] = n end
        end
        local exp = eos.windows_expected(inputs)
        local model = soak.windows_model(words, base, c.a, c.d, n_max, wpart, part_max)
        local checked = 0
        for key, count in pairs(exp) do
          local k, s = key:match("^%a|w(%d+)|(%d+)$")
          assert.are.equal(count, model.expected(tonumber(k), tonumber(s)), key)
          checked = checked + 1
        end
        assert.is_true(checked > 100)
        -- Every window the model says is due: closing exactly those passes eos' check.
        local closed = {}
        model.each_due(function(kind, k, s)
          closed[#closed + 1] = { key = kind .. "|w" .. k .. "|" .. s, count = model.expected(k, s) }
        end)
        local r = eos.check_windows(inputs, closed)
        assert.are.same({ 0, 0, 0, 0 }, { r.missing, r.wrong, r.unknown, r.dups }, eos.describe_windows(r))
        assert.are.equal(r.due, #closed)
        -- A window with no input counts 0 (the soak calls a closed one "unknown").
        assert.are.equal(0, model.expected(3, base + (c.a * n_max) // c.d + 5000))
      end)
  end

  it("counts up to 15 per number in packed counters", function()
    local c = soak.counter()
    for _ = 1, 3 do c.inc(7) end
    for _ = 1, 20 do c.inc(8) end
    c.inc(14); c.inc(15); c.inc(9000001)
    assert.are.same({ 0, 3, 15, 1, 1, 1, 0 }, { c.get(6), c.get(7), c.get(8), c.get(14), c.get(15), c.get(9000001), c.get(16) })
  end)

  it("fits a slope per unit of x", function()
    assert.are.equal(2, soak.slope({ 0, 1, 2, 3 }, { 1, 3, 5, 7 }))
    assert.is_nil(soak.slope({ 0, 1 }, { 1, 2 }))
    assert.are.equal(0, soak.slope({ 0, 1, 2, 3 }, { 5, nil, 5, 5 }))
    -- Theil-Sen: one point off the line does not move it.
    assert.are.equal(2, soak.median_slope({ 0, 1, 2, 3, 4 }, { 1, 3, 5, 7, 30 }))
    assert.is_nil(soak.median_slope({ 0, 1 }, { 1, 2 }))
  end)

  -- 30 min, a sample every 5 s, a new process every 180 s: RSS starts each
  -- life at 14 MiB, settles at 18 and rises with a lag burst in the last life.
  local function saw(leak_per_hour)
    local samples = {}
    for t = 0, 1800, 5 do
      local life = t // 180
      local age = t - life * 180
      local rss = (age < 10 and 14 or 18) + leak_per_hour * t / 3600
      if t >= 1700 then rss = rss + (t - 1700) / 10 end -- the lag burst: +10 MiB at the end
      samples[#samples + 1] = { t = t, pid = 100 + life, rss_kb = rss * 1024, fds = 110, refs = 23 }
    end
    return samples
  end

  it("judges RSS by the trend of its per-minute floor, not by where the run ends in its saw-tooth", function()
    local flat = soak.trends(saw(0), {}, 1800)
    assert.is_true(flat.rss_all > 0.10 * 18, "every sample's slope would call it rising")
    assert.is_true(math.abs(flat.slopes.rss) < 0.01)
    assert.is_true(flat.all_flat)
    -- A leak of 4 MiB/h lifts the floor: not flat (limit: 10 % of the median level per hour).
    local leak = soak.trends(saw(4), {}, 1800)
    assert.is_true(math.abs(leak.slopes.rss - 4) < 0.01, tostring(leak.slopes.rss))
    assert.is_false(leak.flat.rss)
    assert.is_false(leak.all_flat)
  end)

  it("plots a gap where the worker was down and marks kills and reloads", function()
    local samples = {
      { t = 0, pid = 1, rss_kb = 1024, fds = 10, refs = 5, lag = 0 },
      { t = 60, pid = 1, rss_kb = 2048, fds = 10, refs = 5, lag = 3 },
      { t = 120, pid = 2, rss_kb = 1024, fds = 11, refs = 5, lag = 1 },
      { t = 180, pid = 2, rss_kb = 1024, fds = 11, refs = 5, lag = 0 },
    }
    local svg = soak.plot(samples, { { t = 90, kind = "kill" }, { t = 30, kind = "reload" } },
      { title = "t <&>", duration = 180 })
    assert.truthy(svg:match("^<svg"))
    local rss_path = svg:match('<path d="([^"]*)" fill="none" stroke="#d62728"')
    local _, moves = rss_path:gsub("M", "")
    assert.are.equal(2, moves) -- a new line after the restart
    assert.truthy(svg:find("kill -9 + restart", 1, true))
    assert.truthy(svg:find('stroke-dasharray="4,3"', 1, true))
    assert.truthy(svg:find("t &lt;&amp;&gt;", 1, true))
    assert.truthy(svgplot.render { panels = { { series = { { points = {} } } } } }:match("</svg>"))
  end)
end)
