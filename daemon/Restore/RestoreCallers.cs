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
        List<(string Root, VolumeName Volume, ProcessStamp[] Processes)> quietOnes;
        long now = Environment.TickCount64;
        lock (_gate)
        {
            quietOnes = _restores.Where(r => now - r.Value.LastCall >= quiet.TotalMilliseconds)
                .Select(r => (r.Key.Root, r.Key.Volume, r.Value.Processes.ToArray())).ToList();
        }
        // /proc is read outside the lock, so calls are never held up by it.
        return quietOnes.Where(r => !r.Processes.Any(ProcessTree.IsRunning))
            .Select(r => (r.Root, r.Volume, string.Join(", ", r.Processes.Select(p => p.Pid)))).ToList();
    }

    private sealed class Callers
    {
        public HashSet<ProcessStamp> Processes { get; } = [];
        public long LastCall { get; set; }
    }
}
