using System.Globalization;

namespace DirBackup.Backup;

/// <summary>A process told apart from a later one that reuses its pid, by the time it started (in clock ticks since boot).</summary>
public readonly record struct ProcessStamp(int Pid, ulong StartTicks);

/// <summary>Process facts from /proc: identity, ancestry and user-namespace id maps.</summary>
public static class ProcessTree
{
    /// <summary>The process now running under <paramref name="pid"/>, or null when none is (a zombie has ended).</summary>
    public static ProcessStamp? StampOf(int pid)
    {
        string stat;
        try
        {
            stat = File.ReadAllText($"/proc/{pid}/stat");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
        // The command name in brackets may hold spaces and brackets itself; the fields after the last one are plain.
        var fields = stat.AsSpan(stat.LastIndexOf(')') + 1).Trim().ToString().Split(' ');
        const int State = 0, StartTime = 19;
        if (fields.Length <= StartTime || fields[State] is "Z" or "X" or "x"
            || !ulong.TryParse(fields[StartTime], NumberStyles.None, CultureInfo.InvariantCulture, out var ticks))
        {
            return null;
        }
        return new ProcessStamp(pid, ticks);
    }

    public static bool IsRunning(ProcessStamp process) => StampOf(process.Pid) == process;

    public static int? ParentOf(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
            {
                if (line.StartsWith("PPid:", StringComparison.Ordinal))
                {
                    return int.Parse(line.AsSpan(5).Trim(), NumberStyles.None, CultureInfo.InvariantCulture);
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return null;
    }

    /// <summary>True when <paramref name="pid"/> is <paramref name="ancestor"/> or one of its descendants.</summary>
    public static bool DescendsFrom(int pid, int ancestor)
    {
        for (int current = pid, hops = 0; current > 1 && hops < 64; hops++)
        {
            if (current == ancestor)
            {
                return true;
            }
            current = ParentOf(current) ?? 0;
        }
        return false;
    }

    /// <summary>The uid or gid map of a process's user namespace as (inside, outside, count) lines.</summary>
    public static List<(long Inside, long Outside, long Count)> IdMap(int pid, char kind)
    {
        var file = $"/proc/{pid}/{(kind == 'u' ? "uid_map" : "gid_map")}";
        return File.ReadAllLines(file)
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Where(f => f.Length == 3)
            .Select(f => (long.Parse(f[0], CultureInfo.InvariantCulture), long.Parse(f[1], CultureInfo.InvariantCulture), long.Parse(f[2], CultureInfo.InvariantCulture)))
            .ToList();
    }
}
