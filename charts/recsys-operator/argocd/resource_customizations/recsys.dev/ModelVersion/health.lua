-- Argo CD health of a recsys.dev ModelVersion: its lifecycle phase, once the operator has
-- observed the current generation. Whether a version serves is the Recommender's rollout,
-- not this object's, so a Ready version is Healthy whether or not it takes traffic. Only
-- Lua's base and table libraries are used (Argo CD's default for argocd-cm scripts).
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

local function labelled(label, detail)
  if present(detail) then
    return label .. ": " .. detail
  end
  return label
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

local phase = obj.status.phase
local working = { Pending = true, Training = true, Evaluating = true, Indexing = true }

if phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to set a phase"
elseif working[phase] then
  hs.status = "Progressing"
  hs.message = labelled(phase, obj.status.message)
elseif phase == "Ready" then
  hs.status = "Healthy"
  hs.message = obj.status.message or ""
elseif phase == "Failed" or phase == "Rejected" then
  hs.status = "Degraded"
  local ready = condition("Ready")
  if ready ~= nil and present(ready.message) then
    hs.message = labelled(phase, ready.message)
  else
    hs.message = labelled(phase, obj.status.message)
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
