-- Argo CD health of a recsys.dev FeatureView from its conditions. Degraded is looked at
-- before Ready: a failed run can leave the previous keyspace serving, and that failure is
-- what an Argo CD user needs to see. Stale (the live data lags past maxStaleness) is
-- Degraded too: features are served, but older than the FeatureView allows. Ready is set
-- once a run has made data live, so a FeatureView waiting for its first run is Progressing.
-- A status older than the spec says nothing yet, so it is Progressing. Only Lua's base and
-- table libraries are used (Argo CD's default).
local hs = {}

local function present(s)
  return s ~= nil and s ~= ""
end

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local generation = obj.metadata.generation
if obj.status == nil or obj.status.observedGeneration == nil
    or (generation ~= nil and obj.status.observedGeneration < generation) then
  hs.status = "Progressing"
  if generation ~= nil then
    hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  else
    hs.message = "Waiting for the operator to report status"
  end
  return hs
end

local degraded = condition("Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message or degraded.reason or "Degraded"
  return hs
end

local stale = condition("Stale")
if stale ~= nil and stale.status == "True" then
  hs.status = "Degraded"
  hs.message = stale.message or stale.reason or "Stale"
  return hs
end

local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end

hs.status = "Progressing"
local progressing = condition("Progressing")
if progressing ~= nil and progressing.status == "True" and present(progressing.message) then
  hs.message = progressing.message
elseif ready ~= nil and present(ready.message) then
  hs.message = ready.message
else
  hs.message = "Waiting for the Ready condition"
end
return hs
