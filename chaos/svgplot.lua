-- A small SVG line plotter for the soak (scripts/soak), with no dependency
-- beyond Lua: stacked panels sharing one x axis, each with its own y scale,
-- and vertical markers (kills, reloads) drawn across every panel.
--
--   svgplot.render{
--     title = "...", xlabel = "minutes",
--     panels = { { label = "RSS (MiB)", series = { { name = "rss", color = "#c00",
--                   points = { {x, y}, {x, nil}, ... } } } }, ... },
--     markers = { { x = 3.0, color = "#d00", dash = false, label = "kill" }, ... },
--   } --> SVG text
--
-- A point with y = nil breaks the line (the worker was down: nothing sampled).
local svgplot = {}

local function esc(s)
  return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"):gsub('"', "&quot;"))
end

-- A "nice" tick step for a range: 1, 2 or 5 times a power of ten, about n ticks.
local function nice_step(range, n)
  if range <= 0 then return 1 end
  local raw = range / n
  local p = 10 ^ math.floor(math.log(raw, 10))
  for _, m in ipairs { 1, 2, 5, 10 } do
    if m * p >= raw then return m * p end
  end
  return 10 * p
end

local function fmt_tick(v, step)
  if step >= 1 then return string.format("%d", math.floor(v + 0.5)) end
  local decimals = math.max(0, -math.floor(math.log(step, 10)))
  return string.format("%." .. decimals .. "f", v)
end

function svgplot.render(spec)
  local W = spec.width or 1000
  local panel_h = spec.panel_height or 170
  local left, right, top, gap, bottom = 80, 170, 76, 34, 50
  local plot_w = W - left - right
  local H = top + #spec.panels * (panel_h + gap) - gap + bottom

  local xmin, xmax = math.huge, -math.huge
  for _, p in ipairs(spec.panels) do
    for _, s in ipairs(p.series) do
      for _, pt in ipairs(s.points) do
        if pt[1] < xmin then xmin = pt[1] end
        if pt[1] > xmax then xmax = pt[1] end
      end
    end
  end
  if spec.xmin then xmin = spec.xmin end
  if spec.xmax then xmax = spec.xmax end
  if xmin == math.huge then xmin, xmax = 0, 1 end
  if xmax <= xmin then xmax = xmin + 1 end
  local function X(x) return left + (x - xmin) / (xmax - xmin) * plot_w end

  local o = {}
  local function add(...) o[#o + 1] = string.format(...) end
  add('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">', W, H, W, H)
  add('<rect width="%d" height="%d" fill="white"/>', W, H)
  add('<text x="%d" y="24" font-size="15" font-weight="bold">%s</text>', left, esc(spec.title or ""))
  if spec.subtitle then add('<text x="%d" y="44" fill="#555">%s</text>', left, esc(spec.subtitle)) end

  local xstep = nice_step(xmax - xmin, 10)
  for pi, p in ipairs(spec.panels) do
    local y0 = top + (pi - 1) * (panel_h + gap)
    local ymin, ymax = math.huge, -math.huge
    for _, s in ipairs(p.series) do
      for _, pt in ipairs(s.points) do
        local y = pt[2]
        if y then
          if y < ymin then ymin = y end
          if y > ymax then ymax = y end
        end
      end
    end
    if ymin == math.huge then ymin, ymax = 0, 1 end
    -- Non-negative data from zero (unless the panel says otherwise), so that
    -- a flat line looks flat instead of a small wobble blown up to full height.
    if ymin >= 0 and not p.tight then ymin = 0 end
    if ymax - ymin < 1e-9 then ymax = ymin + 1 end
    local ystep = nice_step(ymax - ymin, 4)
    ymin = math.floor(ymin / ystep) * ystep
    ymax = math.ceil(ymax / ystep) * ystep
    if ymax <= ymin then ymax = ymin + ystep end
    local function Y(y) return y0 + panel_h - (y - ymin) / (ymax - ymin) * panel_h end

    add('<rect x="%d" y="%d" width="%d" height="%d" fill="#fafafa" stroke="#999"/>', left, y0, plot_w, panel_h)
    -- y grid and ticks
    local v = ymin
    while v <= ymax + ystep * 1e-6 do
      local y = Y(v)
      add('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e4e4e4"/>', left, y, left + plot_w, y)
      add('<text x="%d" y="%.1f" text-anchor="end">%s</text>', left - 6, y + 4, fmt_tick(v, ystep))
      v = v + ystep
    end
    -- x grid
    local xv = math.ceil(xmin / xstep) * xstep
    while xv <= xmax + xstep * 1e-6 do
      local x = X(xv)
      add('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eeeeee"/>', x, y0, x, y0 + panel_h)
      if pi == #spec.panels then
        add('<text x="%.1f" y="%d" text-anchor="middle">%s</text>', x, y0 + panel_h + 16, fmt_tick(xv, xstep))
      end
      xv = xv + xstep
    end
    -- markers
    for _, m in ipairs(spec.markers or {}) do
      if m.x >= xmin and m.x <= xmax then
        add('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-width="%s"%s/>', X(m.x), y0, X(m.x),
          y0 + panel_h, m.color or "#888", m.width or 1, m.dash and ' stroke-dasharray="4,3"' or "")
      end
    end
    -- series: one path, a new subpath after each gap
    for si, s in ipairs(p.series) do
      local d, pen = {}, false
      for _, pt in ipairs(s.points) do
        if pt[2] == nil then pen = false
        else
          d[#d + 1] = string.format("%s%.1f %.1f", pen and "L" or "M", X(pt[1]), Y(pt[2]))
          pen = true
        end
      end
      if #d > 0 then
        add('<path d="%s" fill="none" stroke="%s" stroke-width="1.5"/>', table.concat(d, " "), s.color or "#000")
      end
      add('<text x="%d" y="%d" fill="%s">%s</text>', left + plot_w + 10, y0 + 16 + (si - 1) * 16, s.color or "#000",
        esc(s.name or ""))
    end
    add('<text x="%d" y="%d" font-weight="bold">%s</text>', left, y0 - 6, esc(p.label or ""))
  end

  -- marker legend
  local seen, ly = {}, top + #spec.panels * (panel_h + gap) - gap - 10
  for _, m in ipairs(spec.markers or {}) do
    if m.label and not seen[m.label] then
      seen[m.label] = true
      add('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="%s"%s/>', left + plot_w + 10, ly,
        left + plot_w + 30, ly, m.color or "#888", m.width or 1, m.dash and ' stroke-dasharray="4,3"' or "")
      add('<text x="%d" y="%d">%s</text>', left + plot_w + 34, ly + 4, esc(m.label))
      ly = ly - 16
    end
  end
  add('<text x="%d" y="%d" text-anchor="middle">%s</text>', left + plot_w // 2, H - 12, esc(spec.xlabel or ""))
  add("</svg>")
  return table.concat(o, "\n") .. "\n"
end

return svgplot
