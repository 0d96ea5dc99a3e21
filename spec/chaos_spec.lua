-- The quick versions of the fault-injection scenarios (chaos/scenarios/,
-- scripts/chaos --quick): each must record figures and none may show a loss.
local lib = require "chaos.lib"

describe("chaos (quick)", function()
  for _, s in ipairs(lib.scenarios()) do
    if s.quick_in_suite then
      it(s.name .. ": " .. s.title, function()
        local rows, err = lib.run(s, { quick = true })
        assert.is_nil(err)
        assert.is_true(#rows > 0, "the scenario recorded no figure")
        for _, r in ipairs(rows) do
          assert.is_true(r.ok, lib.format { r })
        end
      end)
    end
  end
end)
