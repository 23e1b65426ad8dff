using DirBackup.Backup;
using DirBackup.Store;

namespace DirBackup.Restore;

/// <summary>
/// Which processes made the calls of each restore in progress. PVE makes a restore's calls, its cleanup included,
/// from its task's worker (PVE-API.md 4.3, 4.5); a worker killed outright never sends the cleanup, so a restore
/// whose callers have all ended, and that no call has touched for a while, has been abandoned.
/// </summary>
public sealed class RestoreCallers
{
    private readonly Lock _gate = new();
    private readonly Dictionary<(string Root, VolumeName Volume), Callers> _restores = [];

    /// <summary>A call of the restore from <paramref name="pid"/> (the peer of its connection).</summary>
    public void Note(string root, VolumeName volume, int pid)
    {
        var stamp = ProcessTree.StampOf(pid);
        lock (_gate)
        {
            if (!_restores.TryGetValue((root, volume), out var callers))
            {
                _restores[(root, volume)] = callers = new Callers();
            }
            callers.LastCall = Environment.TickCount64;
            if (stamp is { } running)
            {
                callers.Processes.Add(running);
            }
        }
    }

    /// <summary>The restore's cleanup came.</summary>
    public void Forget(string root, VolumeName volume)
    {
        lock (_gate)
        {
            _restores.Remove((root, volume));
        }
    }

    /// <summary>
    /// The restores none of whose callers is still running and that no call touched for <paramref name="quiet"/>:
    /// the quiet time lets a step made from another process come first.
    /// </summary>
    public List<(string Root, VolumeName Volume, string Pids)> Abandoned(TimeSpan quiet)
    {
        List<(string, VolumeName, Callers)> candidates;
        long now = Environment.TickCount64;
        lock (_gate)
        {
            candidates = _restores.Where(r => now - r.Value.LastCall >= quiet.TotalMilliseconds)
                .Select(r => (r.Key.Root, r.Key.Volume, r.Value)).ToList();
        }
        var abandoned = new List<(string, VolumeName, string)>();
        foreach (var (root, volume, callers) in candidates)
        {
            ProcessStamp[] processes;
            lock (_gate)
            {
                processes = [.. callers.Processes];
            }
            if (!processes.Any(ProcessTree.IsRunning))
            {
                abandoned.Add((root, volume, string.Join(", ", processes.Select(p => p.Pid))));
            }
        }
        return abandoned;
    }

    private sealed class Callers
    {
        public HashSet<ProcessStamp> Processes { get; } = [];
        public long LastCall { get; set; }
    }
}
