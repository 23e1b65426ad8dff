using System.Globalization;

namespace DirBackup.Tests.Infrastructure;

/// <summary>
/// A process's memory mappings as /proc/&lt;pid&gt;/smaps lists them. Tests check that a process asked for transparent
/// huge pages (<see cref="Mapping.HugePagesAdvised"/>, the "hg" flag madvise sets), not that it got them: whether a
/// fault gets a huge page depends on free memory and on how the mapping lines up with 2 MiB boundaries.
/// </summary>
public static class Smaps
{
    public sealed record Mapping(long Start, long End, string Name, bool HugePagesAdvised)
    {
        public bool Holds(long address) => address >= Start && address < End;
    }

    public static IReadOnlyList<Mapping> Read(string pid = "self")
    {
        var mappings = new List<Mapping>();
        (long Start, long End, string Name)? current = null;
        foreach (var line in File.ReadLines($"/proc/{pid}/smaps"))
        {
            var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            var range = fields[0].Split('-');
            if (range.Length == 2 && long.TryParse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out long start)
                && long.TryParse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out long end))
            {
                current = (start, end, fields.Length > 5 ? fields[5] : "");
            }
            else if (current is { } mapping && fields[0] == "VmFlags:")
            {
                mappings.Add(new Mapping(mapping.Start, mapping.End, mapping.Name, fields.Contains("hg")));
            }
        }
        return mappings;
    }

    /// <summary>The kernel's transparent huge page mode: always, madvise or never.</summary>
    public static string TransparentHugePageMode()
    {
        var setting = File.ReadAllText("/sys/kernel/mm/transparent_hugepage/enabled");
        int open = setting.IndexOf('[', StringComparison.Ordinal);
        return setting[(open + 1)..setting.IndexOf(']', open)];
    }
}
