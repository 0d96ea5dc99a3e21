-- busted output handler: busted's own terminal output, then the plain
-- "N passed, N failed" line that CI reads (errors count as failures).
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.utfTerminal")(options)
  local passed, failed = 0, 0
  busted.subscribe({ "test", "end" }, function(element, parent, status)
    if status == "success" then passed = passed + 1
    elseif status == "failure" or status == "error" then failed = failed + 1 end
    return nil, true
  end)
  -- A spec file that does not load, a describe block that raises, a path that
  -- does not exist: busted reports these on "error" channels, outside any test.
  busted.subscribe({ "error" }, function() failed = failed + 1; return nil, true end)
  busted.subscribe({ "suite", "end" }, function()
    io.write(string.format("\n%d passed, %d failed\n", passed, failed))
    io.flush()
    return nil, true
  end)
  return handler
end
