using System.Globalization;

namespace DirBackup.Backup;

/// <summary>Process facts from /proc: ancestry and user-namespace id maps.</summary>
public static class ProcessTree
{
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
